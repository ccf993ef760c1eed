import Foundation

/// Mixtral's routing of tokens from their router logits: softmax over all experts (Float32,
/// max-subtracted), the k most probable experts (most probable first; ties go to the lower
/// index), and gates renormalised over those k, `gate_j = p_j / Σ_chosen p`.
///
/// The logits themselves (x · Wgᵀ) are the layer's product; this type holds the per-token
/// routing of the last forward pass and turns gate gradients (plus the auxiliary losses'
/// terms) into logit gradients.
public struct TopKRouter {
    public let experts: Int
    public let topK: Int
    public private(set) var rows = 0
    /// Softmax of each token's logits (rows × experts).
    public private(set) var probabilities: [Float] = []
    /// logsumexp of each token's logits (rows).
    public private(set) var logSumExp: [Float] = []
    /// Chosen experts (rows × topK), most probable first.
    public private(set) var choices: [Int] = []
    /// Renormalised gates (rows × topK): each row sums to 1.
    public private(set) var gates: [Float] = []
    /// Σ of the chosen experts' probabilities (rows): the renormaliser.
    public private(set) var chosenMass: [Float] = []

    public init(experts: Int, topK: Int) {
        precondition(experts >= 1 && (1...experts).contains(topK), "TopKRouter: top-\(topK) of \(experts) experts")
        self.experts = experts
        self.topK = topK
    }

    /// Routes `rows` tokens from their logits (rows × experts).
    public mutating func route(logits: UnsafePointer<Float>, rows: Int) {
        let (E, k) = (experts, topK)
        self.rows = rows
        var p = [Float](repeating: 0, count: rows * E), lse = [Float](repeating: 0, count: rows)
        var chosen = [Int](repeating: 0, count: rows * k), g = [Float](repeating: 0, count: rows * k)
        var masses = [Float](repeating: 0, count: rows)
        for t in 0..<rows {
            let l = logits + t * E
            var maximum = l[0]
            for e in 1..<E { maximum = max(maximum, l[e]) }
            var sum: Double = 0
            for e in 0..<E {
                let v = exp(l[e] - maximum)
                p[t * E + e] = v
                sum += Double(v)
            }
            let inverse = Float(1 / sum)
            for e in 0..<E { p[t * E + e] *= inverse }
            lse[t] = maximum + Float(log(sum))
            var mass: Float = 0
            for j in 0..<k {
                var best = -1
                for e in 0..<E where !(0..<j).contains(where: { chosen[t * k + $0] == e }) {
                    if best < 0 || p[t * E + e] > p[t * E + best] { best = e }
                }
                chosen[t * k + j] = best
                mass += p[t * E + best]
            }
            masses[t] = mass
            for j in 0..<k { g[t * k + j] = p[t * E + chosen[t * k + j]] / mass }
        }
        (probabilities, logSumExp, choices, gates, chosenMass) = (p, lse, chosen, g, masses)
    }

    /// ∂objective/∂logits (rows × experts, overwritten) of the last `route`, from
    /// - `dGates` (rows × topK): ∂objective/∂gate of each chosen pair (0 for a dropped pair);
    /// - `dProbability` (experts): a term added to ∂objective/∂p_e of every token (the balance loss's);
    /// - `zWeight`: the weight w of `w · Σ_tokens logsumexp²` in the objective (the z-loss's).
    public func backward(dGates: UnsafePointer<Float>, dProbability: [Float], zWeight: Float,
                         dLogits: UnsafeMutablePointer<Float>) {
        let (E, k) = (experts, topK)
        var dp = [Float](repeating: 0, count: E)
        for t in 0..<rows {
            let p = t * E
            for e in 0..<E { dp[e] = dProbability[e] }
            // g_j = p_j / S with S = Σ_chosen p: ∂/∂p_m = (dg_m − Σ_j dg_j g_j) / S.
            var weighted: Float = 0
            for j in 0..<k { weighted += dGates[t * k + j] * gates[t * k + j] }
            for j in 0..<k { dp[choices[t * k + j]] += (dGates[t * k + j] - weighted) / chosenMass[t] }
            // Softmax: ∂/∂l_e = p_e (dp_e − Σ p·dp); z-loss: ∂(lse²)/∂l_e = 2 lse p_e.
            var dot: Float = 0
            for e in 0..<E { dot += probabilities[p + e] * dp[e] }
            let z = 2 * zWeight * logSumExp[t]
            for e in 0..<E { dLogits[p + e] = probabilities[p + e] * (dp[e] - dot + z) }
        }
    }
}
