// swift-tools-version:6.0
import PackageDescription

/// Swift settings: two named sets, below (docs/ARCHITECTURE.md).
/// Language mode 5: the communication layer is synchronous by contract (it runs on dedicated
/// threads, never on the concurrency pool), so strict Sendable checking buys little here.
/// On x86-64, release builds target AVX2 + FMA (Haswell, 2013, and every later x86-64 server
/// CPU): the kernels' 8-lane SIMD code (exponentials, row reductions, AdamW) then runs as one
/// 256-bit instruction per operation with fused multiply-adds instead of pairs of SSE ones
/// (flash attention forward+backward about 10% faster). Debug builds stay generic.
#if arch(x86_64)
let releaseCPU: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"], .when(configuration: .release))]
#else
let releaseCPU: [SwiftSetting] = []
#endif
/// Two sets. `numericSettings` (release: `-Ounchecked`) only for the numeric modules, whose inner
/// loops index buffers whose sizes they compute themselves. `settings` (release: `-O`, bounds and
/// overflow checks kept) for every module that parses bytes from sockets or files (service,
/// handshake, rendezvous, safetensors, token shards, configs) and for the tests: there a
/// malformed count must trap or throw, never read or write out of bounds.
let settings: [SwiftSetting] = [
    .swiftLanguageMode(.v5),
    .unsafeFlags(["-O", "-wmo"], .when(configuration: .release)),
] + releaseCPU
let numericSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v5),
    .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
] + releaseCPU

let package = Package(
    name: "Tessera",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tessera", targets: ["TesseraCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .target(name: "CCPUID"),
        // The GEMM micro-kernels: optimised in debug builds too (the unit tests multiply 257³
        // products on every instruction set); each vector kernel picks its ISA per function.
        .target(name: "CGemm", cSettings: [.unsafeFlags(["-O2"])]),
        .target(name: "CBF16"),
        .target(name: "CAdamW", cSettings: [.unsafeFlags(["-O2", "-fno-math-errno"])]),
        // Decode attention's block kernel (LeanAttention): AVX-512, AVX2 + FMA and portable, per function.
        .target(name: "CDecode", cSettings: [.unsafeFlags(["-O2"])]),
        .target(name: "TensorCore", swiftSettings: numericSettings),
        .target(name: "Kernels", dependencies: ["COpenBLAS", "CCPUID", "CGemm", "CBF16", "CDecode", "CAdamW"], swiftSettings: numericSettings),
        .target(name: "Collectives", dependencies: ["TensorCore"], swiftSettings: settings),
        .target(name: "CollectivesMPI", dependencies: ["Collectives", "CMPI"], swiftSettings: settings),
        .target(name: "Networking", dependencies: [.product(name: "Crypto", package: "swift-crypto")], swiftSettings: settings),
        .target(name: "CollectivesTCP", dependencies: ["Collectives", "Networking"], swiftSettings: settings),
        .target(name: "Models", dependencies: ["Kernels", "Collectives", "TensorCore"], swiftSettings: numericSettings),
        .target(name: "Checkpointing", dependencies: ["TensorCore", .product(name: "Crypto", package: "swift-crypto")], swiftSettings: settings),
        .target(name: "CheckpointService", dependencies: ["Checkpointing", "Networking", .product(name: "Crypto", package: "swift-crypto")], swiftSettings: settings),
        .target(name: "TrainingConfig", dependencies: ["Models", "Kernels", "Yams"], swiftSettings: settings),
        .target(name: "TokenData", dependencies: ["TensorCore"], swiftSettings: settings),
        .target(name: "Training", dependencies: ["TrainingConfig", "TokenData", "Models", "Checkpointing", "CheckpointService", "Collectives", "Kernels", "TensorCore", "Yams"], swiftSettings: settings),
        .target(name: "Distillation", dependencies: ["Training", "TrainingConfig", "TokenData", "Models", "Checkpointing", "Collectives", "Kernels", "TensorCore", "Yams"], swiftSettings: settings),
        .executableTarget(
            name: "TesseraCLI",
            dependencies: [
                "Training", "Distillation", "TrainingConfig", "TokenData", "CollectivesMPI", "CollectivesTCP", "Networking", "Checkpointing", "CheckpointService", "Collectives", "Kernels", "Models", "TensorCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: settings),

        .target(name: "_TestSupport", dependencies: ["TensorCore"],
                path: "Tests/_TestSupport", swiftSettings: settings),
        .target(name: "_CheckpointTestSupport", dependencies: ["Checkpointing", "TensorCore"],
                path: "Tests/_CheckpointTestSupport", swiftSettings: settings),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore"], swiftSettings: settings),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "CDecode", "_TestSupport"], swiftSettings: settings),
        .testTarget(name: "CollectivesTests", dependencies: ["Collectives", "_TestSupport"], swiftSettings: settings),
        .testTarget(name: "CollectivesTCPTests", dependencies: ["CollectivesTCP", "Collectives", "Networking", "_TestSupport"], swiftSettings: settings),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "Kernels", "Collectives", "TensorCore", "_TestSupport"], swiftSettings: settings),
        .testTarget(name: "NetworkingTests", dependencies: ["Networking", "_TestSupport"], swiftSettings: settings),
        .testTarget(name: "CheckpointingTests", dependencies: ["Checkpointing", "TensorCore", "_TestSupport", "_CheckpointTestSupport"], swiftSettings: settings),
        .testTarget(name: "CheckpointServiceTests", dependencies: ["CheckpointService", "Checkpointing", "Networking", "TensorCore", "_TestSupport", "_CheckpointTestSupport"], swiftSettings: settings),
        .testTarget(name: "TrainingConfigTests", dependencies: ["TrainingConfig", "Models", "_TestSupport"], swiftSettings: settings),
        .testTarget(name: "TokenDataTests", dependencies: ["TokenData", "TensorCore", "_TestSupport"], swiftSettings: settings),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Distillation", "TrainingConfig", "TokenData", "CheckpointService", "Checkpointing", "Collectives", "Kernels", "Models", "TensorCore", "_TestSupport"], swiftSettings: settings),
    ]
)
