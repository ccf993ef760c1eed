import CGemm
import Dispatch
import Foundation

/// Which code computes `Matmul.gemm`'s products in this process (`kernels.gemm`).
public enum GemmImplementation: String, CaseIterable, Sendable {
    /// `TesseraGemm`: packing here, register-blocked micro-kernels in `CGemm`.
    case tessera
    /// OpenBLAS `cblas_sgemm` with the core the process runs (`BLASLibrary.coreName`).
    case openblas

    /// `kernels.gemm: auto` (the default): OpenBLAS when the core it runs is at least as wide as
    /// Tessera's widest kernel for this CPU (its best cores match Tessera's GEMM on the bench
    /// shapes and train about 1.1× faster, docs/BENCHMARKS.md), Tessera's own when OpenBLAS runs narrower kernels (a core set by
    /// hand or by the machine, such as Haswell's AVX2 on an AVX-512 CPU: Tessera is 1.7–1.9×
    /// faster there) or a core this table does not know.
    public static func automatic(openBLASCore: String, features: CPUFeatures) -> GemmImplementation {
        let widest: Int
        switch TesseraGemm.ISA.available(on: features)[0] {
        case .avx512: widest = 5
        case .avx2: widest = 4
        case .portable: widest = 0
        }
        guard let core = BLASCore.named(openBLASCore) else { return .tessera }
        return core.level >= widest ? .openblas : .tessera
    }

    /// What `kernels.gemm` names: `auto` resolved for this process, or the implementation itself.
    public static func configured(_ value: String) -> GemmImplementation? {
        value == "auto" ? automatic(openBLASCore: BLASLibrary.coreName, features: CPUInfo.current.features) : GemmImplementation(rawValue: value)
    }
}

public enum GemmError: Error, CustomStringConvertible, Equatable {
    case unknownISA(String)
    case unsupportedISA(String, cpu: String)

    public var description: String {
        switch self {
        case .unknownISA(let value):
            return "TESSERA_GEMM_ISA=\(value) is not an instruction set of the GEMM: use one of \(TesseraGemm.ISA.allCases.map(\.rawValue).joined(separator: ", ")), or unset it"
        case .unsupportedISA(let value, let cpu):
            return "TESSERA_GEMM_ISA=\(value): this CPU (\(cpu)) lacks those instructions; unset it or pick one of \(TesseraGemm.ISA.available(on: CPUInfo.current.features).map(\.rawValue).joined(separator: ", "))"
        }
    }
}

/// Tessera's own Float32 GEMM: BLIS-style cache blocking (panels of B of KC × NC in L2, blocks of
/// A of MC × KC, packed into slivers) around a register-blocked micro-kernel chosen once per process
/// from CPUID (`TESSERA_GEMM_ISA` overrides it).
///
/// Bits: every element of C is, for each block of KC along k (fixed boundaries 0, KC, 2·KC, …),
/// one chain of multiply-adds from zero in k order, then `C = alpha · sum + beta · C` (beta 1
/// after the first block). Nothing depends on where m or n are cut, so a product split over rows
/// or columns across threads gives the bits of one thread; the AVX-512 and AVX2 kernels (both
/// fused) also agree with each other bit for bit, the portable one (multiply, then add) does not.
public enum TesseraGemm {
    public enum ISA: String, CaseIterable, Sendable {
        case avx512, avx2, portable

        /// The instruction sets this CPU runs, widest first (`portable` always).
        public static func available(on features: CPUFeatures) -> [ISA] {
            #if arch(x86_64)
            var isas: [ISA] = []
            if features.contains(.avx512) { isas.append(.avx512) }
            if features.isSuperset(of: [.avx2, .fma]) { isas.append(.avx2) }
            return isas + [.portable]
            #else
            return [.portable]
            #endif
        }
    }

    /// The micro-kernel of one instruction set, its tile (mr rows × nr columns of C) and the
    /// packing that feeds it (a copy: every packer gives the same panel).
    struct Kernel {
        let mr: Int, nr: Int
        let function: tessera_gemm_kernel
        let pack: tessera_gemm_packer

        init(_ isa: ISA) {
            switch isa {
            #if arch(x86_64)
            case .avx512:
                (mr, nr, function, pack) = (Int(TESSERA_GEMM_AVX512_MR), Int(TESSERA_GEMM_AVX512_NR), tessera_sgemm_kernel_avx512, tessera_gemm_pack_avx512)
            case .avx2:
                (mr, nr, function, pack) = (Int(TESSERA_GEMM_AVX2_MR), Int(TESSERA_GEMM_AVX2_NR), tessera_sgemm_kernel_avx2, tessera_gemm_pack)
            #else
            case .avx512, .avx2:
                preconditionFailure("no \(isa) kernel on this architecture (ISA.available offers only portable)")
            #endif
            case .portable:
                (mr, nr, function, pack) = (Int(TESSERA_GEMM_PORTABLE_MR), Int(TESSERA_GEMM_PORTABLE_NR), tessera_sgemm_kernel_portable, tessera_gemm_pack)
            }
        }
    }

    /// The instruction set `environment` (`TESSERA_GEMM_ISA`) asks for, or the widest of `features`.
    public static func resolveISA(environment: String?, features: CPUFeatures) throws -> ISA {
        let available = ISA.available(on: features)
        guard let environment, !environment.isEmpty else { return available[0] }
        guard let isa = ISA(rawValue: environment.lowercased()) else { throw GemmError.unknownISA(environment) }
        guard available.contains(isa) else { throw GemmError.unsupportedISA(environment, cpu: CPUInfo.current.modelName) }
        return isa
    }

    /// This process's instruction set, decided once. A bad `TESSERA_GEMM_ISA` is reported by
    /// `Matmul.select` (called at start-up) before any product; here it falls back to CPUID.
    public static let isa: ISA = (try? resolveISA(environment: ProcessInfo.processInfo.environment["TESSERA_GEMM_ISA"],
                                                  features: CPUInfo.current.features)) ?? ISA.available(on: CPUInfo.current.features)[0]
    static let kernels: [ISA: Kernel] = Dictionary(uniqueKeysWithValues: ISA.available(on: CPUInfo.current.features).map { ($0, Kernel($0)) })

    /// Depth of a packed panel (fixed: it decides the bits), most rows of a packed block of A,
    /// widest B packed as one panel per KC block (NC), and the width of B's panels beyond it
    /// (`ncStream`; both multiples of every nr). KC 512: half the passes over C of KC 256 for the
    /// deep products (the weight gradients, k = 2048). With n > NC, A is packed once per KC block
    /// for up to `mc` rows (8 MiB, L3) and panels of `ncStream` columns of B stream under it
    /// (256 KiB, a quarter of Zen 5's L2, with room for A's slivers and C; 512 columns filled
    /// the 1 MiB L2: n = 2048 0.97 → 1.02, 256×768×2048 TN 0.97 → 1.00 of OpenBLAS Cooperlake at
    /// 1 thread in 3 interleaved rounds, 256 columns between). With n ≤ NC, B is packed once per
    /// KC block before A; an A of rows (not transposed) then goes in blocks of up to `mcSmall`
    /// rows, each used from L2 right after its packing (2048×256×768 NT 0.94 → 0.99), while a
    /// transposed A stays one block (narrow blocks of its rows: 768×256×2048 TN 0.94 → 0.91).
    static let kc = 512, mc = 4096, nc = 512, mcSmall = 240
    static let ncStream = 128

    /// C (m, n) = alpha · op(A) · op(B) + beta · C on this thread (the contract of `Matmul.gemm`,
    /// which splits over threads and handles k == 0 and alpha == 0). `isa` must be available.
    /// `shared`: the operand this thread does not split is packed together with the other threads
    /// of the product (`gemm(parts:)`); B only when n ≤ NC (one panel per KC block).
    static func gemm(isa: ISA = isa, transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, shared: SharedPanel? = nil) {
        guard let kernel = kernels[isa] else { preconditionFailure("GEMM kernel \(isa) does not run on this CPU") }
        let (mr, nr) = (kernel.mr, kernel.nr)
        let kcMax = min(k, kc), onePanel = n <= nc
        let sharedA = shared?.operand == .a ? shared : nil, sharedB = shared?.operand == .b ? shared : nil
        precondition(sharedB == nil || onePanel, "a shared B is one panel per KC block")
        // Blocks of A as even as the limit allows (m = 4100 is two blocks of 2052, not 4096 and 4), whole slivers.
        let rowLimit = onePanel && !transposeA && sharedA == nil ? mcSmall : mc
        let rowBlocks = (m + rowLimit - 1) / rowLimit, blockRows = ((m + rowBlocks - 1) / rowBlocks + mr - 1) / mr * mr
        let panelWidth = onePanel ? n : ncStream
        let panelColumns = (panelWidth + nr - 1) / nr * nr, paddedRows = (m + mr - 1) / mr * mr
        let buffers = PackBuffers.current
        let packedB = buffers.b.reserve(sharedB == nil ? kcMax * panelColumns : 1)
        let packedA = buffers.a.reserve(sharedA == nil ? kcMax * blockRows : 1)
        let packB = { (jc: Int, nb: Int, pc: Int, kb: Int) in
            kernel.pack(transposeB ? 1 : 0, nb, kb, transposeB ? b + jc * ldb + pc : b + pc * ldb + jc, ldb, nr, packedB)
        }
        // Every element's KC blocks are added to C in k order whatever the order of the other loops.
        for pc in stride(from: 0, to: k, by: kc) {
            let kb = min(kc, k - pc), blockBeta = pc == 0 ? beta : 1
            var panelB = packedB
            if let sharedB {
                panelB = sharedB.pack(block: pc / kc, at: pc * panelColumns, kernel: kernel, strided: transposeB, width: n, depth: kb,
                                      source: transposeB ? b + pc : b + pc * ldb, ld: ldb, r: nr)
            } else if onePanel {
                packB(0, n, pc, kb)
            }
            let blockA = sharedA?.pack(block: pc / kc, at: pc * paddedRows, kernel: kernel, strided: !transposeA, width: m, depth: kb,
                                       source: transposeA ? a + pc * lda : a + pc, ld: lda, r: mr)
            for ic in stride(from: 0, to: m, by: blockRows) {
                let mb = min(blockRows, m - ic)
                var panelA = packedA
                if let blockA {
                    panelA = blockA + ic * kb
                } else {
                    kernel.pack(transposeA ? 0 : 1, mb, kb, transposeA ? a + pc * lda + ic : a + ic * lda + pc, lda, mr, packedA)
                }
                for jc in stride(from: 0, to: n, by: panelWidth) {
                    let nb = min(panelWidth, n - jc)
                    if !onePanel { packB(jc, nb, pc, kb) }
                    // Rows outer (as BLIS arranges it for Zen 4): one sliver of A (24 KiB) stays in
                    // L1 while the slivers of the panel of B (up to 1 MiB, in L2) stream past it.
                    // Measured against columns outer (B's 32 KiB sliver in L1 with A streaming):
                    // 0.96 / 0.99 of OpenBLAS's best core at 1 / 2 threads against 0.97 / 0.94.
                    for ir in stride(from: 0, to: mb, by: mr) {
                        let rows = min(mr, mb - ir)
                        let cRow = c + (ic + ir) * ldc + jc
                        for jr in stride(from: 0, to: nb, by: nr) {
                            kernel.function(kb, panelA + ir * kb, panelB + jr * kb, cRow + jr, ldc,
                                            rows, min(nr, nb - jr), alpha, blockBeta)
                        }
                    }
                }
            }
        }
    }

    /// The operand that no thread of a split product splits (B under blocks of rows, A under
    /// blocks of columns), packed once for all of them: every KC block by the threads together
    /// into one buffer holding the whole operand, rather than by each thread into its own.
    struct SharedPanel {
        enum Operand { case a, b }
        let operand: Operand
        /// The packed operand, block after block of KC depths (each block's slivers side by side).
        let packed: UnsafeMutablePointer<Float>
        /// Per KC block: the next chunk to claim, the chunks packed.
        let counters: UnsafeMutablePointer<Int>
        let chunks: Int

        /// The packed block `index` (at `offset` in `packed`), packed by the callers together.
        func pack(block index: Int, at offset: Int, kernel: Kernel, strided: Bool, width: Int, depth: Int,
                  source: UnsafePointer<Float>, ld: Int, r: Int) -> UnsafeMutablePointer<Float> {
            tessera_gemm_pack_shared(kernel.pack, counters + 2 * index, counters + 2 * index + 1, chunks, strided ? 1 : 0,
                                     width, depth, source, ld, r, packed + offset)
            return packed + offset
        }
    }

    /// Largest operand (floats) packed once for all threads of a split product (16 MiB).
    static let sharedLimit = 1 << 22

    /// `gemm` split over `parts` threads (at most one per row or column) in the blocks of
    /// `Matmul.block`, each block computed as on one thread (the same bits); the operand no block
    /// splits is packed once for all of them (`SharedPanel`) when it fits `sharedLimit`, and for B
    /// when it is one panel (n ≤ NC). k > 0 and alpha ≠ 0 (`Matmul.gemm` handles the others).
    static func gemm(isa: ISA = isa, parts: Int, transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard let kernel = kernels[isa] else { preconditionFailure("GEMM kernel \(isa) does not run on this CPU") }
        let byRows = m >= n, blocks = (k + kc - 1) / kc, parts = min(parts, byRows ? m : n)
        let size = byRows ? (n + kernel.nr - 1) / kernel.nr * kernel.nr * k : (m + kernel.mr - 1) / kernel.mr * kernel.mr * k
        var shared: SharedPanel? = nil
        let counters = UnsafeMutablePointer<Int>.allocate(capacity: 2 * blocks)
        defer { counters.deallocate() }
        if size <= sharedLimit && (!byRows || n <= nc) {
            counters.initialize(repeating: 0, count: 2 * blocks)
            shared = SharedPanel(operand: byRows ? .b : .a, packed: PackBuffers.current.shared.reserve(size), counters: counters, chunks: 2 * parts)
        }
        let panel = shared
        DispatchQueue.concurrentPerform(iterations: parts) { part in
            let (rows, columns) = Matmul.block(part, of: parts, m: m, n: n)
            gemm(isa: isa, transposeA: transposeA, transposeB: transposeB, m: rows.count, n: columns.count, k: k, alpha: alpha,
                 a: transposeA ? a + rows.lowerBound : a + rows.lowerBound * lda, lda: lda,
                 b: transposeB ? b + columns.lowerBound * ldb : b + columns.lowerBound, ldb: ldb,
                 beta: beta, c: c + rows.lowerBound * ldc + columns.lowerBound, ldc: ldc, shared: panel)
        }
    }
}

/// The packed panels of one thread, kept between products: small products (flash attention's
/// tiles) would otherwise spend longer allocating them than multiplying. Freed with the thread.
final class PackBuffers {
    /// A 64-byte aligned buffer that only grows.
    struct Buffer {
        private(set) var pointer: UnsafeMutablePointer<Float>? = nil
        private var capacity = 0

        mutating func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
            if count > capacity || pointer == nil {
                pointer?.deallocate()
                capacity = max(count, 1)
                pointer = UnsafeMutableRawPointer.allocate(byteCount: capacity * 4, alignment: 64).bindMemory(to: Float.self, capacity: capacity)
            }
            return pointer!
        }
    }

    var a = Buffer(), b = Buffer()
    /// The operand the threads of a product split from this thread share (`TesseraGemm.SharedPanel`).
    var shared = Buffer()
    /// LeanAttention's lane records in `forward` (on the calling thread) and scratch (on each worker).
    var partials = Buffer(), scores = Buffer()

    deinit { a.pointer?.deallocate(); b.pointer?.deallocate(); shared.pointer?.deallocate(); partials.pointer?.deallocate(); scores.pointer?.deallocate() }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        let status = pthread_key_create(&key) { if let buffers = $0 { Unmanaged<PackBuffers>.fromOpaque(buffers).release() } }
        precondition(status == 0, "pthread_key_create failed (\(status)): no thread-local GEMM buffers")
        return key
    }()

    /// This thread's buffers, created on its first product.
    static var current: PackBuffers {
        if let existing = pthread_getspecific(key) { return Unmanaged<PackBuffers>.fromOpaque(existing).takeUnretainedValue() }
        let buffers = PackBuffers()
        pthread_setspecific(key, Unmanaged.passRetained(buffers).toOpaque())
        return buffers
    }
}
