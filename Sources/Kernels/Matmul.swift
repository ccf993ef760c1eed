import COpenBLAS

/// Matrix products on OpenBLAS `cblas_sgemm` (row-major).
///
/// Weights follow Hugging Face's `[out, in]` layout, so a linear layer is `y = x · Wᵀ`.
public enum Matmul {
    /// C (m, n) = alpha · op(A) · op(B) + beta · C, row-major with leading dimensions.
    /// op(A) is (m, k), op(B) is (k, n).
    @inline(__always)
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        if k == 0 {
            // BLAS leaves C untouched only for beta == 1; make k == 0 mean "C = beta · C".
            for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] } }
            return
        }
        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Linear forward: y (rows, out) = x (rows, in) · Wᵀ, W is (out, in).
    public static func linearForward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                     rows: Int, inFeatures: Int, outFeatures: Int) {
        gemm(transposeA: false, transposeB: true, m: rows, n: outFeatures, k: inFeatures,
             a: x, lda: inFeatures, b: weight, ldb: inFeatures, c: y, ldc: outFeatures)
    }

    /// Linear backward: dx (rows, in) = dy · W (overwrites, or adds when `accumulateInput`);
    /// dW (out, in) += dyᵀ · x (always accumulates, so gradients of a step add up).
    public static func linearBackward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                      dx: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>,
                                      rows: Int, inFeatures: Int, outFeatures: Int, accumulateInput: Bool = false) {
        if let dx {
            gemm(transposeA: false, transposeB: false, m: rows, n: inFeatures, k: outFeatures,
                 a: dy, lda: outFeatures, b: weight, ldb: inFeatures, beta: accumulateInput ? 1 : 0, c: dx, ldc: inFeatures)
        }
        gemm(transposeA: true, transposeB: false, m: outFeatures, n: inFeatures, k: rows,
             a: dy, lda: outFeatures, b: x, ldb: inFeatures, beta: 1, c: dWeight, ldc: inFeatures)
    }

    /// OpenBLAS threads of this process (`--threads`).
    public static var threads: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(newValue)) }
    }
}
