import Foundation

extension Reference {
    /// Decode attention, the naive twin of `LeanAttention`: one query per (batch, head), q and
    /// the result (B, Hq, D), k and v (B, Hkv, length, D), over the cache rows in `positions`
    /// (all by default), one softmax in Float64. Returns o and lse (the log of the softmax
    /// denominator, with the 1/√D scale); an empty range gives o = 0 and lse = −∞.
    public static func decodeAttention<T: BinaryFloatingPoint>(q: [T], k: [T], v: [T], batch: Int, length: Int, heads: Int,
                                                              kvHeads: Int, headDim: Int,
                                                              positions: Range<Int>? = nil) -> (o: [T], lse: [T]) {
        let range = positions ?? 0..<length
        let scale = 1 / Double(headDim).squareRoot()
        var o = [T](repeating: 0, count: batch * heads * headDim), lse = [T](repeating: -.infinity, count: batch * heads)
        for b in 0..<batch { for h in 0..<heads {
            guard !range.isEmpty else { continue }
            let kvh = h / (heads / kvHeads)
            let row = { (j: Int) in ((b * kvHeads + kvh) * length + j) * headDim }
            var scores: [Double] = []
            for j in range {
                var s = 0.0
                for d in 0..<headDim { s += Double(q[(b * heads + h) * headDim + d]) * Double(k[row(j) + d]) }
                scores.append(s * scale)
            }
            let maximum = scores.max()!
            let weights = scores.map { exp($0 - maximum) }
            let sum = weights.reduce(0, +)
            for d in 0..<headDim {
                var acc = 0.0
                for (i, j) in range.enumerated() { acc += weights[i] * Double(v[row(j) + d]) }
                o[(b * heads + h) * headDim + d] = T(acc / sum)
            }
            lse[b * heads + h] = T(maximum + log(sum))
        } }
        return (o, lse)
    }
}
