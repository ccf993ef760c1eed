import Foundation

/// Causal scaled-dot-product attention with grouped-query heads, on BLAS.
///
/// Materialises the probabilities (B, Hq, T, T) for the backward pass: the exact, simple
/// attention the tiled flash kernel is tested against (`attention.kernel: naive`); it skips the masked
/// upper triangle by working in row blocks, so it does about half the flops of a full T×T.
///
/// Layouts: q, o are (B, T, Hq, D); k, v are (B, T, Hkv, D); Hq is a multiple of Hkv.
public struct CausalAttention {
    public let batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int
    /// Rows of scores computed per GEMM: large enough for BLAS efficiency, small enough that the
    /// wasted work above the diagonal stays under a block's width.
    public static let rowBlock = 64

    public init(batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int) {
        precondition(heads % kvHeads == 0, "CausalAttention: \(heads) heads do not split into \(kvHeads) kv heads")
        self.batch = batch; self.length = length; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
    }

    public var probabilityCount: Int { batch * heads * length * length }
    var scale: Float { 1 / Float(headDim).squareRoot() }

    private func blocks() -> [Range<Int>] {
        stride(from: 0, to: length, by: Self.rowBlock).map { $0..<min($0 + Self.rowBlock, length) }
    }

    /// o = softmax(q kᵀ / √D, causal) v; `probabilities` (B, Hq, T, T) is saved for backward
    /// (entries above the diagonal are left unspecified).
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        o: UnsafeMutablePointer<Float>, probabilities: UnsafeMutablePointer<Float>,
                        threads: KernelThreads = .single) {
        let T = length, D = headDim, qStride = heads * D, kvStride = kvHeads * D
        threads.forItems(batch * heads) { pairs in
            for pair in pairs {
                let b = pair / heads, h = pair % heads
                let kvh = h / (heads / kvHeads)
                let qh = q + b * T * qStride + h * D
                let kh = k + b * T * kvStride + kvh * D, vh = v + b * T * kvStride + kvh * D
                let oh = o + b * T * qStride + h * D
                let p = probabilities + (b * heads + h) * T * T
                for rows in blocks() {
                    let visible = rows.upperBound
                    Matmul.gemm(transposeA: false, transposeB: true, m: rows.count, n: visible, k: D, alpha: scale,
                                a: qh + rows.lowerBound * qStride, lda: qStride, b: kh, ldb: kvStride,
                                c: p + rows.lowerBound * T, ldc: T)
                    for i in rows { Self.softmaxCausalRow(p + i * T, visible: i + 1, width: visible) }
                    Matmul.gemm(transposeA: false, transposeB: false, m: rows.count, n: D, k: visible,
                                a: p + rows.lowerBound * T, lda: T, b: vh, ldb: kvStride,
                                c: oh + rows.lowerBound * qStride, ldc: qStride)
                }
            }
        }
    }

    /// Softmax over the first `visible` entries; zeroes the rest of the computed `width`.
    @inline(__always)
    static func softmaxCausalRow(_ row: UnsafeMutablePointer<Float>, visible: Int, width: Int) {
        var maximum = -Float.infinity
        for j in 0..<visible { maximum = max(maximum, row[j]) }
        for j in 0..<visible { row[j] -= maximum }
        VectorMath.exp(row, row, count: visible)
        var sum: Float = 0
        for j in 0..<visible { sum += row[j] }
        let inverse = 1 / sum
        for j in 0..<visible { row[j] *= inverse }
        for j in visible..<width { row[j] = 0 }
    }

    /// Gradients dq (overwritten), dk and dv (overwritten) from dO.
    public func backward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                         o: UnsafePointer<Float>, probabilities: UnsafePointer<Float>, dO: UnsafePointer<Float>,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         threads: KernelThreads = .single) {
        let kvStride = kvHeads * headDim
        dk.update(repeating: 0, count: batch * length * kvStride)
        dv.update(repeating: 0, count: batch * length * kvStride)
        // Query heads sharing a kv head accumulate into the same dK, dV: parallel work is split
        // by (batch, kv head), each item handling its group of query heads in order.
        let group = heads / kvHeads
        threads.forItems(batch * kvHeads) { items in
            let dS = UnsafeMutablePointer<Float>.allocate(capacity: length * length)
            defer { dS.deallocate() }
            for item in items {
                let b = item / kvHeads, kvh = item % kvHeads
                for h in (kvh * group)..<((kvh + 1) * group) {
                    backwardHead(b: b, h: h, kvh: kvh, q: q, k: k, v: v, o: o, probabilities: probabilities, dO: dO,
                                 dq: dq, dk: dk, dv: dv, dS: dS)
                }
            }
        }
    }

    private func backwardHead(b: Int, h: Int, kvh: Int, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              o: UnsafePointer<Float>, probabilities: UnsafePointer<Float>, dO: UnsafePointer<Float>,
                              dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                              dS: UnsafeMutablePointer<Float>) {
        let T = length, D = headDim, qStride = heads * D, kvStride = kvHeads * D
        let offsetQ = b * T * qStride + h * D, offsetKV = b * T * kvStride + kvh * D
        let p = probabilities + (b * heads + h) * T * T
        for rows in blocks() {
            let visible = rows.upperBound, r0 = rows.lowerBound
            // dP = dO · Vᵀ  (rows × visible)
            Matmul.gemm(transposeA: false, transposeB: true, m: rows.count, n: visible, k: D,
                        a: dO + offsetQ + r0 * qStride, lda: qStride, b: v + offsetKV, ldb: kvStride,
                        c: dS + r0 * T, ldc: T)
            // dS = P ⊙ (dP − Σ_d dO·O)
            for i in rows {
                let dOi = dO + offsetQ + i * qStride, oi = o + offsetQ + i * qStride
                var rowDot: Float = 0
                for d in 0..<D { rowDot += dOi[d] * oi[d] }
                let pi = p + i * T, dSi = dS + i * T
                for j in 0...i { dSi[j] = pi[j] * (dSi[j] - rowDot) }
                for j in (i + 1)..<max(i + 1, visible) { dSi[j] = 0 }
            }
            // dV[0..<visible] += Pᵀ · dO
            Matmul.gemm(transposeA: true, transposeB: false, m: visible, n: D, k: rows.count,
                        a: p + r0 * T, lda: T, b: dO + offsetQ + r0 * qStride, ldb: qStride,
                        beta: 1, c: dv + offsetKV, ldc: kvStride)
            // dQ = scale · dS · K
            Matmul.gemm(transposeA: false, transposeB: false, m: rows.count, n: D, k: visible, alpha: scale,
                        a: dS + r0 * T, lda: T, b: k + offsetKV, ldb: kvStride,
                        c: dq + offsetQ + r0 * qStride, ldc: qStride)
            // dK[0..<visible] += scale · dSᵀ · Q
            Matmul.gemm(transposeA: true, transposeB: false, m: visible, n: D, k: rows.count, alpha: scale,
                        a: dS + r0 * T, lda: T, b: q + offsetQ + r0 * qStride, ldb: qStride,
                        beta: 1, c: dk + offsetKV, ldc: kvStride)
        }
    }
}
