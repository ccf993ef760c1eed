import COpenBLAS
import Dispatch
import Foundation

/// Matrix products, row-major, on Tessera's own GEMM (`TesseraGemm`) or OpenBLAS `cblas_sgemm`,
/// one choice per process (`kernels.gemm`, `Matmul.select`).
///
/// Weights follow Hugging Face's `[out, in]` layout, so a linear layer is `y = x · Wᵀ`.
public enum Matmul {
    /// Which GEMM this process runs (`auto` until a command selects one); set at start-up by
    /// `select`, before any product.
    public private(set) nonisolated(unsafe) static var implementation: GemmImplementation = .automatic(openBLASCore: BLASLibrary.coreName, features: CPUInfo.current.features)

    /// Makes `implementation` compute every later product, after checking `TESSERA_GEMM_ISA`.
    /// - Throws: `GemmError` when that variable names an unknown set or one this CPU lacks.
    public static func select(_ implementation: GemmImplementation) throws {
        _ = try TesseraGemm.resolveISA(environment: ProcessInfo.processInfo.environment["TESSERA_GEMM_ISA"],
                                       features: CPUInfo.current.features)
        self.implementation = implementation
    }

    /// "tessera (AVX-512 kernel)" or "openblas (Haswell core)": for start lines and bench reports.
    public static var implementationDescription: String {
        switch implementation {
        case .tessera: return "tessera (\(TesseraGemm.isa.rawValue) kernel)"
        case .openblas: return "openblas (\(BLASLibrary.coreName) core)"
        }
    }

    /// C (m, n) = alpha · op(A) · op(B) + beta · C, row-major with leading dimensions.
    /// op(A) is (m, k), op(B) is (k, n). beta 0 sets C without reading it (NaN there is ignored);
    /// k == 0 or alpha == 0 makes C = beta · C. `implementation` is the process's unless given
    /// (the OpenBLAS checks at start-up name theirs).
    ///
    /// With more than one of `threads`, a large product is cut into blocks of rows of C (or of
    /// columns, when C is wide), one per kernel thread, and every element of C is still one sum
    /// over the whole k. OpenBLAS computes each block in its own single-threaded call (no
    /// synchronisation); Tessera's GEMM packs the operand no block splits once for all the threads
    /// (`TesseraGemm.gemm(parts:)`) and gives the bits of one thread for any split; so do
    /// most OpenBLAS cores, but on Haswell and Zen their kernels depend on the block's shape, so
    /// the last bits move with the thread count (`BLASLibrary.productsSplitExactly`).
    @inline(__always)
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, threads: KernelThreads = .single,
                            implementation: GemmImplementation = Matmul.implementation) {
        guard m > 0, n > 0 else { return }
        let parts = min(threads.count, max(1, m * n * k / minimumWorkPerThread))
        if parts > 1 {
            if implementation == .tessera && alpha != 0 {
                TesseraGemm.gemm(parts: parts, transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha,
                                 a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
                return
            }
            DispatchQueue.concurrentPerform(iterations: parts) { part in
                let (rows, columns) = block(part, of: parts, m: m, n: n)
                gemm(transposeA: transposeA, transposeB: transposeB, m: rows.count, n: columns.count, k: k, alpha: alpha,
                     a: transposeA ? a + rows.lowerBound : a + rows.lowerBound * lda, lda: lda,
                     b: transposeB ? b + columns.lowerBound * ldb : b + columns.lowerBound, ldb: ldb,
                     beta: beta, c: c + rows.lowerBound * ldc + columns.lowerBound, ldc: ldc, implementation: implementation)
            }
            return
        }
        if k == 0 || alpha == 0 {
            // BLAS leaves C untouched only for beta == 1; make k == 0 mean "C = beta · C".
            for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] } }
            return
        }
        if implementation == .tessera {
            TesseraGemm.gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha,
                             a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
            return
        }
        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Linear forward: y (rows, out) = x (rows, in) · Wᵀ, W is (out, in).
    public static func linearForward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                     rows: Int, inFeatures: Int, outFeatures: Int, threads: KernelThreads = .single) {
        gemm(transposeA: false, transposeB: true, m: rows, n: outFeatures, k: inFeatures,
             a: x, lda: inFeatures, b: weight, ldb: inFeatures, c: y, ldc: outFeatures, threads: threads)
    }

    /// Linear backward: dx (rows, in) = dy · W (overwrites, or adds when `accumulateInput`);
    /// dW (out, in) += dyᵀ · x (always accumulates, so gradients of a step add up).
    public static func linearBackward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                      dx: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>,
                                      rows: Int, inFeatures: Int, outFeatures: Int, accumulateInput: Bool = false,
                                      threads: KernelThreads = .single) {
        if let dx {
            gemm(transposeA: false, transposeB: false, m: rows, n: inFeatures, k: outFeatures,
                 a: dy, lda: outFeatures, b: weight, ldb: inFeatures, beta: accumulateInput ? 1 : 0, c: dx, ldc: inFeatures, threads: threads)
        }
        gemm(transposeA: true, transposeB: false, m: outFeatures, n: inFeatures, k: rows,
             a: dy, lda: outFeatures, b: x, ldb: inFeatures, beta: 1, c: dWeight, ldc: inFeatures, threads: threads)
    }

    /// Whether a product split over threads gives the bits of one thread with this process's
    /// GEMM: always for Tessera's, for OpenBLAS only on cores whose kernels do not depend on
    /// the block's shape (`BLASLibrary.productsSplitExactly`).
    public static var productsSplitExactly: Bool { implementation == .tessera || BLASLibrary.productsSplitExactly }

    /// The rows and columns of C that thread `part` of `parts` computes: blocks of rows when
    /// m ≥ n, of columns otherwise.
    static func block(_ part: Int, of parts: Int, m: Int, n: Int) -> (rows: Range<Int>, columns: Range<Int>) {
        m >= n ? ((part * m / parts)..<((part + 1) * m / parts), 0..<n) : (0..<m, (part * n / parts)..<((part + 1) * n / parts))
    }

    /// Below this many multiply-adds per thread a product is not split (about 0.1 ms of work).
    static let minimumWorkPerThread = 1 << 22
}
