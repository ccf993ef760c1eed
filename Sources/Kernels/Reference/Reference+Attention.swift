import Foundation

/// The naive twin of `FlashAttention`: every score, probability and gradient materialised one
/// row at a time, in the scalar type T (Float for a Float32 twin, Double for a reference).
extension Reference {
    /// Shapes and masking of one attention call: q, o (B, Tq, Hq, D), k, v (B, Tk, Hkv, D).
    /// When causal, key j is visible to query i iff keyPositions[j] ≤ queryPositions[i];
    /// positions default to keys at 0..<Tk and queries at (Tk − Tq)..<Tk.
    public struct AttentionShape {
        public let batch: Int, queryLength: Int, keyLength: Int, heads: Int, kvHeads: Int, headDim: Int
        public let causal: Bool
        public let queryPositions: [Int], keyPositions: [Int]

        public init(batch: Int, queryLength: Int, keyLength: Int, heads: Int, kvHeads: Int, headDim: Int,
                    causal: Bool, queryPositions: [Int]? = nil, keyPositions: [Int]? = nil) {
            self.batch = batch; self.queryLength = queryLength; self.keyLength = keyLength
            self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim; self.causal = causal
            self.queryPositions = queryPositions ?? Array((keyLength - queryLength)..<keyLength)
            self.keyPositions = keyPositions ?? Array(0..<keyLength)
        }

        func visible(_ i: Int, _ j: Int) -> Bool { !causal || keyPositions[j] <= queryPositions[i] }
        func qIndex(_ b: Int, _ i: Int, _ h: Int, _ d: Int) -> Int { ((b * queryLength + i) * heads + h) * headDim + d }
        func kIndex(_ b: Int, _ j: Int, _ h: Int, _ d: Int) -> Int { ((b * keyLength + j) * kvHeads + h) * headDim + d }
        func statistic(_ b: Int, _ h: Int, _ i: Int) -> Int { (b * heads + h) * queryLength + i }
    }

    /// The probabilities of one query row over every key (0 where masked), and its logsumexp
    /// (−∞ when no key is visible, in which case every probability is 0).
    static func probabilities<T: BinaryFloatingPoint>(_ s: AttentionShape, q: [T], k: [T], b: Int, h: Int, i: Int) -> (p: [T], logsumexp: T) {
        let kvh = h / (s.heads / s.kvHeads), scale = 1 / T(Double(s.headDim).squareRoot())
        let qi = s.qIndex(b, i, h, 0)
        var scores = [T](repeating: -.infinity, count: s.keyLength)
        for j in 0..<s.keyLength where s.visible(i, j) {
            let kj = s.kIndex(b, j, kvh, 0)
            var dot: T = 0
            for d in 0..<s.headDim { dot += q[qi + d] * k[kj + d] }
            scores[j] = dot * scale
        }
        guard let maximum = scores.max(), maximum > -.infinity else {
            return ([T](repeating: 0, count: s.keyLength), -.infinity)
        }
        let weights = scores.map { $0 == -.infinity ? 0 : T(Foundation.exp(Double($0 - maximum))) }
        let sum = weights.reduce(0, +)
        return (weights.map { $0 / sum }, maximum + T(Foundation.log(Double(sum))))
    }

    /// o (B, Tq, Hq, D) and the logsumexp L (B, Hq, Tq) of masked attention. `rows` limits the
    /// work to some query rows (the others are left 0), for tests of long sequences.
    public static func attention<T: BinaryFloatingPoint>(_ s: AttentionShape, q: [T], k: [T], v: [T], rows: [Int]? = nil)
        -> (o: [T], logsumexp: [T]) {
        var o = [T](repeating: 0, count: q.count), lse = [T](repeating: 0, count: s.batch * s.heads * s.queryLength)
        for b in 0..<s.batch { for h in 0..<s.heads {
            let kvh = h / (s.heads / s.kvHeads)
            for i in rows ?? Array(0..<s.queryLength) {
                let (p, l) = probabilities(s, q: q, k: k, b: b, h: h, i: i)
                lse[s.statistic(b, h, i)] = l
                let oi = s.qIndex(b, i, h, 0)
                for j in 0..<s.keyLength where p[j] != 0 {
                    let vj = s.kIndex(b, j, kvh, 0)
                    for d in 0..<s.headDim { o[oi + d] += p[j] * v[vj + d] }
                }
            }
        } }
        return (o, lse)
    }

    /// Gradients of Σ dO ⊙ o with respect to q, k and v, through the materialised probabilities:
    /// dP = dO vᵀ, dS = P ⊙ (dP − Σ_j P dP), dq = scale · dS k, dk = scale · dSᵀ q, dv = Pᵀ dO.
    /// Rows whose dO is 0 add nothing and are skipped.
    public static func attentionBackward<T: BinaryFloatingPoint>(_ s: AttentionShape, q: [T], k: [T], v: [T], dO: [T])
        -> (dq: [T], dk: [T], dv: [T]) {
        var dq = [T](repeating: 0, count: q.count), dk = [T](repeating: 0, count: k.count), dv = dk
        let scale = 1 / T(Double(s.headDim).squareRoot())
        for b in 0..<s.batch { for h in 0..<s.heads {
            let kvh = h / (s.heads / s.kvHeads)
            for i in 0..<s.queryLength {
                let qi = s.qIndex(b, i, h, 0)
                guard dO[qi..<(qi + s.headDim)].contains(where: { $0 != 0 }) else { continue }
                let p = probabilities(s, q: q, k: k, b: b, h: h, i: i).p
                var dP = [T](repeating: 0, count: s.keyLength)
                for j in 0..<s.keyLength where p[j] != 0 {
                    let vj = s.kIndex(b, j, kvh, 0)
                    for d in 0..<s.headDim { dP[j] += dO[qi + d] * v[vj + d] }
                }
                var rowDot: T = 0
                for j in 0..<s.keyLength { rowDot += p[j] * dP[j] }
                for j in 0..<s.keyLength where p[j] != 0 {
                    let dS = p[j] * (dP[j] - rowDot) * scale, kj = s.kIndex(b, j, kvh, 0)
                    for d in 0..<s.headDim {
                        dq[qi + d] += dS * k[kj + d]
                        dk[kj + d] += dS * q[qi + d]
                        dv[kj + d] += p[j] * dO[qi + d]
                    }
                }
            }
        } }
        return (dq, dk, dv)
    }
}
