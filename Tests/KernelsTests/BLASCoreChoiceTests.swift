import Foundation
import Testing
import Kernels

/// The start-up choice of OpenBLAS core (`BLASCoreChoice`) on a table of CPUs, libraries and
/// settings; the executable carries it out (scripts/test-blas.sh checks that end to end).
@Suite struct BLASCoreChoiceTests {
    static let sse: CPUFeatures = [.sse3, .ssse3, .sse41, .sse42]
    static let avx2: CPUFeatures = sse.union([.avx, .avx2, .fma])
    static let avx512: CPUFeatures = avx2.union(.avx512)
    static let avx512bf16: CPUFeatures = avx512.union(.avx512bf16)
    /// Debian 12's OpenBLAS 0.3.21 (what `BLASLibrary.shippedCores` finds in it).
    static let debian = ["Prescott", "Atom", "Opteron", "Opteron_SSE3", "Barcelona", "Nano", "Bobcat", "Core2", "Penryn",
                         "Dunnington", "Nehalem", "Sandybridge", "Bulldozer", "Piledriver", "Steamroller", "Excavator",
                         "Haswell", "Zen", "SkylakeX", "Cooperlake"]
    /// An older build without the BF16 core.
    static let older = debian.filter { $0 != "Cooperlake" }

    struct Case: CustomTestStringConvertible, Sendable {
        let title: String
        let features: CPUFeatures
        var isX86 = true
        var isAMD = false
        var library = BLASCoreChoiceTests.debian
        let picked: String
        var environment: String? = nil
        let want: BLASCoreChoice
        var testDescription: String { title }
    }

    static let cases: [Case] = [
        Case(title: "an Intel AVX-512 + BF16 model the library does not know: Prescott -> Cooperlake",
             features: avx512bf16, picked: "Prescott", want: .switchTo(core: "Cooperlake", libraryPicked: "Prescott")),
        Case(title: "the same CPU with an older library: SkylakeX", features: avx512bf16, library: older, picked: "Prescott",
             want: .switchTo(core: "SkylakeX", libraryPicked: "Prescott")),
        Case(title: "AVX-512 without BF16: SkylakeX", features: avx512, picked: "Prescott",
             want: .switchTo(core: "SkylakeX", libraryPicked: "Prescott")),
        Case(title: "an AMD AVX2 CPU the library does not know: Zen", features: avx2, isAMD: true, picked: "Prescott",
             want: .switchTo(core: "Zen", libraryPicked: "Prescott")),
        Case(title: "an Intel AVX2 CPU the library does not know: Haswell", features: avx2, picked: "Prescott",
             want: .switchTo(core: "Haswell", libraryPicked: "Prescott")),
        Case(title: "AVX-512 AMD the library runs on its AVX2 Zen core: SkylakeX level wins", features: avx512, isAMD: true,
             picked: "Zen", want: .switchTo(core: "SkylakeX", libraryPicked: "Zen")),
        Case(title: "the library knows the CPU", features: avx512bf16, picked: "Cooperlake", want: .library("Cooperlake")),
        Case(title: "Zen and Haswell are the same level: the library's Zen stays on Intel", features: avx2, picked: "Zen",
             want: .library("Zen")),
        Case(title: "no AVX at all, library on Nehalem", features: sse, picked: "Nehalem", want: .library("Nehalem")),
        Case(title: "no AVX at all, library fell back to Prescott: Nehalem", features: sse, picked: "Prescott",
             want: .switchTo(core: "Nehalem", libraryPicked: "Prescott")),
        Case(title: "SSE3 only: Prescott is the best", features: [.sse3], picked: "Prescott", want: .library("Prescott")),
        Case(title: "the user set Prescott on an AVX-512 CPU: kept", features: avx512bf16, picked: "Prescott",
             environment: "Prescott", want: .environment("Prescott", best: "Cooperlake")),
        Case(title: "a setting in another case is the same core", features: avx512bf16, picked: "SkylakeX",
             environment: "skylakex", want: .environment("SkylakeX", best: "Cooperlake")),
        Case(title: "an empty setting is no setting", features: avx512bf16, picked: "Prescott", environment: "",
             want: .switchTo(core: "Cooperlake", libraryPicked: "Prescott")),
        Case(title: "a name the library does not ship is ignored by it", features: avx512bf16, picked: "Cooperlake",
             environment: "SapphireRapids", want: .environmentIgnored("SapphireRapids", library: "Cooperlake")),
        Case(title: "a typo is ignored by the library", features: avx512bf16, picked: "Cooperlake",
             environment: "Skylake-X", want: .environmentIgnored("Skylake-X", library: "Cooperlake")),
        Case(title: "ARM or another architecture: nothing to do", features: [], isX86: false, library: ["NEOVERSEN1"],
             picked: "NEOVERSEN1", want: .notX86(library: "NEOVERSEN1")),
        Case(title: "a library built for one core only", features: avx512, library: ["Haswell"], picked: "Haswell",
             want: .library("Haswell")),
    ]

    @Test(arguments: cases)
    func choosesTheBestCoreTheLibraryShipsUnlessTheEnvironmentSetsOne(_ c: Case) throws {
        let choice = try BLASCoreChoice.decide(features: c.features, isX86: c.isX86, isAMD: c.isAMD, libraryCores: c.library,
                                               libraryPick: c.picked, environment: c.environment)
        #expect(choice == c.want)
    }

    @Test func aSetCoreThisCPUCannotRunIsRefusedNamingWhatItLacks() {
        #expect(throws: BLASCoreError.unsupportedByCPU(core: "SkylakeX", missing: .avx512, best: "Haswell")) {
            try BLASCoreChoice.decide(features: Self.avx2, isX86: true, isAMD: false, libraryCores: Self.debian,
                                      libraryPick: "Haswell", environment: "SkylakeX")
        }
        let line = BLASCoreError.unsupportedByCPU(core: "SkylakeX", missing: .avx512, best: "Haswell").description
        #expect(line.contains("OPENBLAS_CORETYPE=SkylakeX needs AVX-512") && line.contains("OPENBLAS_CORETYPE=Haswell"))
    }

    @Test func theReexecMarkerRoundTripsEveryCoreAndRejectsOtherPaths() {
        for core in BLASCore.table {
            let path = BLASCoreMarker.path(pid: 4321, picked: core.name)
            #expect(path.flatMap { BLASCoreMarker.pickedCore(fromExecutedPath: $0, pid: 4321) } == core.name)
            #expect(path.flatMap { BLASCoreMarker.pickedCore(fromExecutedPath: $0, pid: 4322) } == nil, "another process's path")
        }
        for other in ["/proc/4321/exe", "/proc/self/exe", "/usr/bin/tessera", "/proc/4321/./x/exe", "/proc/4321/.//exe",
                      "/proc/4321/" + String(repeating: "./", count: BLASCore.table.count + 1) + "exe"] {
            #expect(BLASCoreMarker.pickedCore(fromExecutedPath: other, pid: 4321) == nil, "\(other)")
        }
        #expect(BLASCoreMarker.path(pid: 1, picked: "NoSuchCore") == nil)
    }

    @Test func theLoadedLibraryRunsCorrectProductsAndShipsTheCoreItRuns() {
        #expect(BLASLibrary.productError() < 1e-5, "a correct kernel is within Float32 rounding of the Float64 product")
        #expect(BLASLibrary.shippedCores.contains { $0.lowercased() == BLASLibrary.coreName.lowercased() })
        #expect(BLASLibrary.name.hasPrefix("OpenBLAS "))
    }

    /// CPUID as read here against the kernel's own reading of it (/proc/cpuinfo's flags).
    @Test func cpuidFeaturesAgreeWithTheKernelsFlags() throws {
        #if arch(x86_64) && os(Linux)
        let text = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("flags") })
        let flags = Set(line.split(separator: ":")[1].split(separator: " ").map(String.init))
        let expected: [(CPUFeatures, [String])] = [
            (.sse3, ["pni"]), (.ssse3, ["ssse3"]), (.sse41, ["sse4_1"]), (.sse42, ["sse4_2"]), (.avx, ["avx"]),
            (.avx2, ["avx2"]), (.fma, ["fma"]), (.avx512, ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"]),
            (.avx512bf16, ["avx512_bf16"]), (.amxBF16, ["amx_bf16", "amx_tile"]),
        ]
        for (feature, names) in expected {
            #expect(CPUInfo.current.features.contains(feature) == names.allSatisfy(flags.contains), "\(feature) vs \(names)")
        }
        #expect(!CPUInfo.current.modelName.isEmpty)
        #endif
    }
}
