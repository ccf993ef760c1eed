import Foundation

/// Combines attention results over disjoint key sets, as ring attention does with the key
/// chunks arriving from other ranks.
///
/// A partial result over keys K₁ is (O₁, L₁): O₁ = Σ_{j∈K₁} e^{s_j − L₁} v_j with
/// L₁ = log Σ_{j∈K₁} e^{s_j}. Over K₁ ∪ K₂:  L = log(e^{L₁} + e^{L₂}),
/// O = e^{L₁ − L} O₁ + e^{L₂ − L} O₂. The operation is associative and commutative, and a
/// partial that saw no key (L = −∞, O = 0, as `FlashAttention.forward` writes it) is its
/// identity.
public enum AttentionMerge {
    /// (o, logsumexp) ← merge((o, logsumexp), (otherO, otherLogsumexp)), in place.
    /// o, otherO (B, T, H, D); logsumexp, otherLogsumexp (B, H, T).
    public static func merge(o: UnsafeMutablePointer<Float>, logsumexp: UnsafeMutablePointer<Float>,
                             with otherO: UnsafePointer<Float>, otherLogsumexp: UnsafePointer<Float>,
                             batch: Int, length: Int, heads: Int, headDim: Int, threads: KernelThreads = .single) {
        threads.forRanges(batch * heads * length, minimumChunk: 4096) { rows in
            for row in rows {
                let t = row % length, bh = row / length, b = bh / heads, h = bh % heads
                let offset = ((b * length + t) * heads + h) * headDim
                let (mine, other) = (logsumexp[row], otherLogsumexp[row])
                if other == -.infinity { continue }
                if mine == -.infinity {
                    (o + offset).update(from: otherO + offset, count: headDim)
                    logsumexp[row] = other
                    continue
                }
                let high = max(mine, other)
                let total = high + Foundation.log1p(Foundation.exp(-abs(mine - other)))
                let (a, c) = (Foundation.exp(mine - total), Foundation.exp(other - total))
                for d in 0..<headDim { o[offset + d] = a * o[offset + d] + c * otherO[offset + d] }
                logsumexp[row] = total
            }
        }
    }
}
