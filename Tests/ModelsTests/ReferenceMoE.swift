import Foundation
import Kernels

/// A Float64 mixture-of-experts feed-forward written from its definition, token by token, for
/// the Float32 `MixtureOfExperts` to be checked against (values, and gradients by finite
/// differences of `ReferenceDecoder.loss`).
///
/// Per token: logits = gate · x; p = softmax(logits); the topK largest p (ties to the lower
/// index); gates p / Σ chosen p. With a capacity factor, C = ⌈k · tokens · factor / experts⌉
/// and expert e takes pairs while it holds fewer than C: every token's first choice in token
/// order, then every second choice. out = Σ admitted gate · w2(silu(w1 x) ⊙ w3 x).
/// balance = experts · Σₑ fₑ Pₑ (fₑ: share of the k·tokens pairs routed to e before drops, Pₑ:
/// mean p), zLoss = mean logsumexp². A finite difference sees fₑ as the constant it is almost
/// everywhere, so the balance loss's gradient flows through P alone, as defined.
struct ReferenceMoE {
    let experts: Int, topK: Int, hidden: Int, dModel: Int
    let capacityFactor: Double?

    struct Result {
        var out: [Double]
        var balance: Double
        var zLoss: Double
        var dropped: Int
        var load: [Double]
    }

    /// `weight(name)` returns a tensor by its name relative to the block (`block_sparse_moe.…`).
    func forward(_ x: [Double], rows n: Int, weight: (String) -> [Double]) -> Result {
        let (E, k, d, F) = (experts, topK, dModel, hidden)
        let gate = weight("block_sparse_moe.gate.weight")
        var probabilities = [[Double]](), chosen = [[Int]](), gates = [[Double]]()
        var zSum = 0.0
        for t in 0..<n {
            let logits = (0..<E).map { e in (0..<d).reduce(0.0) { $0 + gate[e * d + $1] * x[t * d + $1] } }
            let top = logits.max()!
            let sum = logits.reduce(0.0) { $0 + exp($1 - top) }
            let p = logits.map { exp($0 - top) / sum }
            let lse = top + log(sum)
            zSum += lse * lse
            let picks = Array((0..<E).sorted { p[$0] > p[$1] || (p[$0] == p[$1] && $0 < $1) }.prefix(k))
            let mass = picks.reduce(0.0) { $0 + p[$1] }
            probabilities.append(p); chosen.append(picks); gates.append(picks.map { p[$0] / mass })
        }
        var admitted = [[Bool]](repeating: [Bool](repeating: true, count: k), count: n)
        var dropped = 0
        if let factor = capacityFactor {
            let capacity = Int((Double(k * n) * factor / Double(E)).rounded(.up))
            var held = [Int](repeating: 0, count: E)
            for j in 0..<k {
                for t in 0..<n {
                    let e = chosen[t][j]
                    admitted[t][j] = held[e] < capacity
                    if admitted[t][j] { held[e] += 1 } else { dropped += 1 }
                }
            }
        }
        var out = [Double](repeating: 0, count: n * d)
        for t in 0..<n {
            let row = Array(x[(t * d)..<((t + 1) * d)])
            for j in 0..<k where admitted[t][j] {
                let prefix = "block_sparse_moe.experts.\(chosen[t][j])."
                let g = Reference.linear(row, weight(prefix + "w1.weight"), rows: 1, inFeatures: d, outFeatures: F)
                let u = Reference.linear(row, weight(prefix + "w3.weight"), rows: 1, inFeatures: d, outFeatures: F)
                let y = Reference.linear(Reference.swiglu(gate: g, up: u), weight(prefix + "w2.weight"), rows: 1, inFeatures: F, outFeatures: d)
                for i in 0..<d { out[t * d + i] += gates[t][j] * y[i] }
            }
        }
        var routed = [Double](repeating: 0, count: E), meanP = routed
        for t in 0..<n {
            for e in chosen[t] { routed[e] += 1 / Double(k * n) }
            for e in 0..<E { meanP[e] += probabilities[t][e] / Double(n) }
        }
        let balance = Double(E) * zip(routed, meanP).reduce(0) { $0 + $1.0 * $1.1 }
        return Result(out: out, balance: balance, zLoss: zSum / Double(n), dropped: dropped, load: routed)
    }
}
