import CBF16
import Dispatch

/// A matrix operand of a bf16 product: Float32 values (rounded to bf16 while packing) or bf16
/// bits already rounded (`BF16.round`, e.g. weights rounded once per optimizer step).
public enum BF16Operand {
    case float(UnsafePointer<Float>)
    case bf16(UnsafePointer<UInt16>)

    func advanced(by offset: Int) -> BF16Operand {
        switch self {
        case .float(let p): return .float(p + offset)
        case .bf16(let p): return .bf16(p + offset)
        }
    }

    func withRaw<R>(_ body: (UnsafeRawPointer, Int32) -> R) -> R {
        switch self {
        case .float(let p): return body(UnsafeRawPointer(p), 0)
        case .bf16(let p): return body(UnsafeRawPointer(p), 1)
        }
    }
}

/// Matrix products with bf16 inputs and Float32 accumulation (`vdpbf16ps`), same arguments and
/// meaning as `Matmul.gemm`.
///
/// Every element of C is summed over k in a fixed order (pairs in order, in blocks of 512 from
/// k = 0) whatever the shape of the block that computes it, so the result is the same bits for
/// any thread count, and on any CPU (`BF16Kernel`: the portable kernel emulates the
/// instruction exactly).
public enum BF16Matmul {
    /// C (m, n) = alpha · op(A) · op(B) + beta · C, row-major; op(A) is (m, k), op(B) (k, n).
    /// beta == 0 never reads C.
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: BF16Operand, lda: Int, b: BF16Operand, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int,
                            threads: KernelThreads = .single, kernel: BF16Kernel = .best) {
        guard m > 0, n > 0 else { return }
        precondition(kernel.isAvailable, "BF16Matmul: the \(kernel) kernel needs AVX512_BF16, which this CPU lacks")
        // Cut C into whole micro-tiles (12 rows or 32 columns) along its longer side.
        let byRows = m >= n
        let tile = byRows ? 12 : 32, tiles = ((byRows ? m : n) + tile - 1) / tile
        let parts = min(threads.count, tiles, max(1, m * n * k / workPerThread))
        guard parts > 1 else {
            single(transposeA, transposeB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, kernel)
            return
        }
        let extent = byRows ? m : n
        DispatchQueue.concurrentPerform(iterations: parts) { part in
            let lower = min(extent, part * tiles / parts * tile), upper = min(extent, (part + 1) * tiles / parts * tile)
            guard upper > lower else { return }
            if byRows {
                single(transposeA, transposeB, upper - lower, n, k, alpha, a.advanced(by: transposeA ? lower : lower * lda), lda,
                       b, ldb, beta, c + lower * ldc, ldc, kernel)
            } else {
                single(transposeA, transposeB, m, upper - lower, k, alpha, a, lda, b.advanced(by: transposeB ? lower * ldb : lower), ldb,
                       beta, c + lower, ldc, kernel)
            }
        }
    }

    private static func single(_ transposeA: Bool, _ transposeB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
                               _ a: BF16Operand, _ lda: Int, _ b: BF16Operand, _ ldb: Int, _ beta: Float,
                               _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ kernel: BF16Kernel) {
        let status = a.withRaw { aRaw, aBF16 in
            b.withRaw { bRaw, bBF16 in
                tessera_bf16_gemm(kernel.code, transposeA ? 1 : 0, transposeB ? 1 : 0, m, n, k, alpha,
                                  aRaw, aBF16, lda, bRaw, bBF16, ldb, beta, c, ldc)
            }
        }
        precondition(status == 0, "BF16Matmul: out of memory for the packing buffers")
    }

    /// Below this many multiply-adds per thread a product is not split.
    static let workPerThread = 1 << 22
}

extension BF16Kernel {
    /// The C core's code for it: 1 the AVX512_BF16 kernel, 2 the emulation built for FMA, 0 the plain emulation.
    var code: Int32 { self == .hardware ? 1 : CPUInfo.current.features.contains(.fma) ? 2 : 0 }
}

/// The products of linear layers in a chosen precision: `.fp32` is `Matmul`'s, `.bf16`
/// `BF16Matmul`'s with the same arguments.
extension Matmul {
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, threads: KernelThreads = .single,
                            precision: ComputePrecision) {
        switch precision {
        case .fp32:
            gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                 beta: beta, c: c, ldc: ldc, threads: threads)
        case .bf16:
            BF16Matmul.gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: .float(a), lda: lda,
                            b: .float(b), ldb: ldb, beta: beta, c: c, ldc: ldc, threads: threads)
        }
    }

    /// `linearForward` in `precision`.
    public static func linearForward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                     rows: Int, inFeatures: Int, outFeatures: Int, threads: KernelThreads,
                                     precision: ComputePrecision) {
        switch precision {
        case .fp32:
            linearForward(x: x, weight: weight, y: y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures, threads: threads)
        case .bf16:
            BF16Matmul.linearForward(x: .float(x), weight: weight, y: y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures,
                                     threads: threads)
        }
    }

    /// `linearBackward` in `precision`: both products (dx and dW) take bf16 inputs.
    public static func linearBackward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                      dx: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>,
                                      rows: Int, inFeatures: Int, outFeatures: Int, accumulateInput: Bool = false,
                                      threads: KernelThreads, precision: ComputePrecision) {
        switch precision {
        case .fp32:
            linearBackward(x: x, weight: weight, dy: dy, dx: dx, dWeight: dWeight, rows: rows, inFeatures: inFeatures,
                           outFeatures: outFeatures, accumulateInput: accumulateInput, threads: threads)
        case .bf16:
            BF16Matmul.linearBackward(x: .float(x), weight: weight, dy: .float(dy), dx: dx, dWeight: dWeight, rows: rows,
                                      inFeatures: inFeatures, outFeatures: outFeatures, accumulateInput: accumulateInput, threads: threads)
        }
    }
}

/// `Matmul.linearForward` and `linearBackward` in bf16 with activations that may be bf16 bits
/// already (made rounded by their producer, e.g. `SwiGLU`'s bf16 outputs); weights are Float32.
extension BF16Matmul {
    public static func linearForward(x: BF16Operand, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                     rows: Int, inFeatures: Int, outFeatures: Int, beta: Float = 0, threads: KernelThreads) {
        gemm(transposeA: false, transposeB: true, m: rows, n: outFeatures, k: inFeatures, a: x, lda: inFeatures,
             b: .float(weight), ldb: inFeatures, beta: beta, c: y, ldc: outFeatures, threads: threads)
    }

    public static func linearBackward(x: BF16Operand, weight: UnsafePointer<Float>, dy: BF16Operand,
                                      dx: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>,
                                      rows: Int, inFeatures: Int, outFeatures: Int, accumulateInput: Bool = false, threads: KernelThreads) {
        if let dx {
            gemm(transposeA: false, transposeB: false, m: rows, n: inFeatures, k: outFeatures, a: dy, lda: outFeatures,
                 b: .float(weight), ldb: inFeatures, beta: accumulateInput ? 1 : 0, c: dx, ldc: inFeatures, threads: threads)
        }
        gemm(transposeA: true, transposeB: false, m: outFeatures, n: inFeatures, k: rows, a: dy, lda: outFeatures,
             b: x, ldb: inFeatures, beta: 1, c: dWeight, ldc: inFeatures, threads: threads)
    }
}
