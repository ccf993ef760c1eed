import Models

/// A training step's auxiliary losses and mixture-of-experts routing, averaged over its
/// forward passes (`train.micro_batch`): each pass's figures are its micro-batch's, over the
/// data ranks (under `parallel.reduction: ordered` every rank's micro-batch is a pass of its
/// own, added in global order); the step's are their mean (the objective adds the mean of the passes'
/// auxiliary losses). With one pass, that pass's figures unchanged.
public struct StepAuxiliaries {
    /// Weighted auxiliary losses by name ("moe_aux", "moe_z") and layer.
    public private(set) var losses: [String: [Int: Double]] = [:]
    /// Per layer: tokens of all passes; load, dropped fraction, balance and z-loss averaged.
    public private(set) var routing: [Int: RoutingSummary] = [:]
    private var passes = 0
    /// One pass's weighted auxiliary losses (by name and layer) and routing (by layer).
    typealias Pass = (losses: [String: [Int: Double]], routing: [Int: RoutingSummary])

    /// Σ over layers of each named loss.
    public var totals: [String: Double] { losses.mapValues { $0.values.reduce(0, +) } }

    mutating func add(losses pass: [String: [Int: Double]], routing summaries: [Int: RoutingSummary]) {
        passes += 1
        for (name, layers) in pass {
            for (layer, value) in layers { losses[name, default: [:]][layer, default: 0] += value }
        }
        for (layer, s) in summaries {
            guard var sum = routing[layer] else { routing[layer] = s; continue }
            sum.tokens += s.tokens
            sum.load = zip(sum.load, s.load).map { $0 + $1 }
            sum.droppedFraction += s.droppedFraction
            sum.balance += s.balance
            sum.zLoss += s.zLoss
            routing[layer] = sum
        }
    }

    /// Turns the sums of `add` into means over the passes (tokens stay summed).
    mutating func average() {
        guard passes > 1 else { return }
        let n = Double(passes)
        losses = losses.mapValues { $0.mapValues { $0 / n } }
        routing = routing.mapValues { s in
            var mean = s
            mean.load = s.load.map { $0 / n }
            mean.droppedFraction /= n
            mean.balance /= n
            mean.zLoss /= n
            return mean
        }
    }
}
