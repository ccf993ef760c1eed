import Collectives
import Foundation

/// What one MoE layer's routing did over the whole global batch (the same on every rank).
public struct RoutingSummary: Equatable, Sendable {
    /// Tokens routed (the global batch's).
    public var tokens: Int
    /// Per expert: fraction of the k·tokens (token, expert) pairs routed to it, before capacity
    /// drops (sums to 1).
    public var load: [Double]
    /// Fraction of the k·tokens pairs dropped by the capacity limit.
    public var droppedFraction: Double
    /// The load-balancing loss without its coefficient: experts · Σₑ fₑ·Pₑ (1 at perfect balance).
    public var balance: Double
    /// The router z-loss without its coefficient: mean over tokens of logsumexp(logits)².
    public var zLoss: Double
}

/// Which (token, choice) pairs a layer runs, and the statistics of its auxiliary losses, taken
/// over every rank's tokens so that any layout gives what one rank gives.
///
/// Each rank contributes its per-expert counts of first and second choices, the sum of its
/// router probabilities and of logsumexp², and its token count (one allgather over the ranks
/// of the global batch, in rank order = the batch's sample order). Capacity admission is then
/// position order over the whole batch: expert e admits first choices in token order, then
/// second choices, until it holds `capacity` pairs; a rank admits its own pairs after the
/// earlier ranks' of the same choice.
struct RoutingPlan {
    /// Per pair (token · k + choice): whether it runs.
    let admitted: [Bool]
    let summary: RoutingSummary
    /// fₑ of the balance loss (its gradient reaches the probabilities through Pₑ only).
    let routedFraction: [Double]

    /// Collective over `comm` (nil: this rank's tokens are the whole batch).
    static func make(router: TopKRouter, spec: MoESpec, comm: Communicator?) throws -> RoutingPlan {
        let (E, k, n) = (router.experts, router.topK, router.rows)
        // [counts of choice 0 (E), ..., of choice k−1 (E), Σ probabilities (E), Σ lse², tokens]
        var local = [Double](repeating: 0, count: (k + 1) * E + 2)
        for t in 0..<n {
            for j in 0..<k { local[j * E + router.choices[t * k + j]] += 1 }
            for e in 0..<E { local[k * E + e] += Double(router.probabilities[t * E + e]) }
            local[(k + 1) * E] += Double(router.logSumExp[t]) * Double(router.logSumExp[t])
        }
        local[(k + 1) * E + 1] = Double(n)
        let all = try gather(local, comm: comm)
        let me = comm?.rank ?? 0
        var total = [Double](repeating: 0, count: local.count), before = total
        for (r, row) in all.enumerated() {
            for i in row.indices { total[i] += row[i]; if r < me { before[i] += row[i] } }
        }
        let tokens = total[(k + 1) * E + 1]
        let perExpert = (0..<E).map { e in (0..<k).reduce(0.0) { $0 + total[$1 * E + e] } }
        let fraction = perExpert.map { tokens > 0 ? $0 / (Double(k) * tokens) : 0 }
        let meanProbability = (0..<E).map { tokens > 0 ? total[k * E + $0] / tokens : 0 }
        let balance = Double(E) * zip(fraction, meanProbability).reduce(0) { $0 + $1.0 * $1.1 }

        var admitted = [Bool](repeating: true, count: n * k)
        var dropped = 0.0
        if let capacity = spec.capacity(tokens: Int(tokens)) {
            for e in 0..<E { dropped += max(0, perExpert[e] - Double(capacity)) }
            for j in 0..<k {
                // Pairs of expert e ahead of this rank's choice-j pairs: all earlier choices, then
                // the earlier ranks' choice-j pairs.
                var position = (0..<E).map { e in (0..<j).reduce(before[j * E + e]) { $0 + total[$1 * E + e] } }
                for t in 0..<n {
                    let e = router.choices[t * k + j]
                    admitted[t * k + j] = position[e] < Double(capacity)
                    position[e] += 1
                }
            }
        }
        let summary = RoutingSummary(tokens: Int(tokens), load: fraction, droppedFraction: tokens > 0 ? dropped / (Double(k) * tokens) : 0,
                                     balance: balance, zLoss: tokens > 0 ? total[(k + 1) * E] / tokens : 0)
        return RoutingPlan(admitted: admitted, summary: summary, routedFraction: fraction)
    }

    /// Every rank's `values`, in rank order.
    static func gather(_ values: [Double], comm: Communicator?) throws -> [[Double]] {
        guard let comm, comm.size > 1 else { return [values] }
        let bytes = values.count * 8
        var flat = [Double](repeating: 0, count: values.count * comm.size)
        try values.withUnsafeBytes { input in
            try flat.withUnsafeMutableBytes { try comm.allGather(input, counts: [Int](repeating: bytes, count: comm.size), into: $0) }
        }
        return (0..<comm.size).map { Array(flat[($0 * values.count)..<(($0 + 1) * values.count)]) }
    }
}
