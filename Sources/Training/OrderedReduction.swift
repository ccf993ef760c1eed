import Collectives
import Kernels
import Models
import TrainingConfig

/// `parallel.reduction: ordered`: a step's gradient summed in an order that does not depend on
/// the number of data ranks, so 1, 2, 3, 4 data ranks give the same bits.
///
/// The global batch is G = global_batch / micro_batch micro-batches; in round j data rank r
/// runs micro-batch j·N + r (`Sampler.indices` already deals passes out that way), so a round's
/// N micro-batches are consecutive in global order. Each micro-batch's gradient is computed
/// from zero; `add()` sends slice s of it to rank s (one all-to-all), and slice s's owner adds
/// the N slices it receives into its accumulator in rank order, that is in global order:
/// acc = ((0 + m0) + m1) + … on any rank count, the left fold one rank runs. `finish()` gathers
/// the owners' slices into every rank's whole gradient. With one round the traffic is a
/// reduce-scatter and an all-gather, what a ring all-reduce moves.
///
/// Under `parallel.zero` ≥ 1 slice r is rank r's ZeRO piece (`ZeroPartition.flat`): `finish()`
/// leaves each owner its summed slice only, the owners update their pieces, and the gradient
/// norm adds the owners' chunk sums in chunk order, as one rank's `sumOfSquares` does.
final class OrderedReduction {
    let parameters: ParameterSet
    /// The data ranks (checked: every parameter is replicated over them).
    let comm: Communicator
    /// Slice r of the flat gradient: rank r's to sum (`slices(count:ranks:)`).
    let slices: [Range<Int>]
    /// Under `parallel.zero` ≥ 1: the owners of the slices (nil: gradients made whole).
    let partition: ZeroPartition?
    private var accumulator: [Float]
    private var received: [Float]

    init(parameters: ParameterSet, comm: Communicator, partition: ZeroPartition? = nil) {
        precondition(parameters.entries.allSatisfy { $0.placement.shardAxis == nil }, "ordered reduction: every parameter must be replicated over the data ranks")
        self.parameters = parameters
        self.comm = comm
        self.partition = partition
        let n = comm.size
        let slices = Self.slices(count: parameters.count, ranks: n)
        self.slices = slices
        precondition(partition.map { $0.flat == slices && $0.groups[0].comm.rank == comm.rank } ?? true,
                     "ordered reduction: the ZeRO pieces must be these slices, owned by the same ranks")
        let mine = slices[comm.rank].count
        accumulator = [Float](repeating: 0, count: mine)
        received = [Float](repeating: 0, count: mine * n)
    }

    /// Starts a step's sum at zero.
    func begin() {
        for i in accumulator.indices { accumulator[i] = 0 }
    }

    /// Adds this round's micro-batch gradients (`parameters.gradients` on every rank, each from
    /// zero) to the owners' slices, rank after rank. Collective over the data ranks.
    func add() throws {
        let n = comm.size, mine = slices[comm.rank].count
        let sendCounts = slices.map { $0.count * 4 }, receiveCounts = [Int](repeating: mine * 4, count: n)
        let gradients = UnsafeRawBufferPointer(start: parameters.gradients.pointer, count: parameters.count * 4)
        try received.withUnsafeMutableBytes { output in
            try comm.allToAll(gradients, sendCounts: sendCounts, into: output, receiveCounts: receiveCounts)
        }
        guard mine > 0 else { return }   // a model of fewer chunks than ranks leaves some ranks nothing to sum
        received.withUnsafeBufferPointer { blocks in
            accumulator.withUnsafeMutableBufferPointer { acc in
                for r in 0..<n {
                    let block = blocks.baseAddress! + r * mine
                    for i in 0..<mine { acc[i] += block[i] }
                }
            }
        }
    }

    /// Rank r of `ranks` sums floats `slices[r]` of `count`: contiguous runs of whole
    /// `GradientClipping.chunkFloats` chunks (the last rank's ends at `count`).
    static func slices(count: Int, ranks n: Int) -> [Range<Int>] {
        let chunk = GradientClipping.chunkFloats, chunks = (count + chunk - 1) / chunk
        return (0..<n).map { r in
            let pieces = ZeroPartition.piece(count: chunks, ranks: n, rank: r)
            return min(count, pieces.lowerBound * chunk)..<min(count, pieces.upperBound * chunk)
        }
    }

    /// Leaves the step's summed gradient in `parameters.gradients`: whole on every rank, or
    /// under ZeRO each owner's slice (at stage ≥ 2 the other pages are given back).
    func finish() throws {
        let gradients = parameters.gradients
        guard let partition else {
            let counts = slices.map { $0.count * 4 }
            let whole = UnsafeMutableRawBufferPointer(start: gradients.pointer, count: parameters.count * 4)
            try accumulator.withUnsafeBytes { try comm.allGather($0, counts: counts, into: whole) }
            return
        }
        let mine = slices[comm.rank]
        for (i, value) in accumulator.enumerated() { gradients.pointer[mine.lowerBound + i] = value }
        if partition.stage >= 2 { ZeroPartition.release(gradients, 0..<parameters.count, keeping: [mine]) }
    }

    /// The global gradient norm after `finish()`: whole gradients' `GradientNorm.global`, or
    /// under ZeRO every owner's chunk sums gathered and added in chunk order, which is the sum
    /// one rank's `GradientClipping.sumOfSquares` takes over the whole gradient.
    func norm(grid: ProcessGrid) throws -> Double {
        guard partition != nil else { return try GradientNorm.global(parameters, grid: grid) }
        let chunk = GradientClipping.chunkFloats, mine = slices[comm.rank], g = parameters.gradients.pointer
        let chunks = slices.map { ($0.count + chunk - 1) / chunk }, most = chunks.max() ?? 0
        var sums = stride(from: mine.lowerBound, to: mine.upperBound, by: chunk).map {
            GradientClipping.sumOfSquares(g + $0, count: min(chunk, mine.upperBound - $0))
        }
        sums += [Double](repeating: 0, count: most - sums.count)
        let all = try comm.allGather(sums)
        var total = 0.0
        for r in 0..<comm.size { for c in 0..<chunks[r] { total += all[r * most + c] } }
        return total.squareRoot()
    }

    /// Σ of every rank's per-round values (`rounds` each, rank r's round j being micro-batch
    /// j·N + r), added in global micro-batch order: the same on every rank and rank count.
    func sumInGlobalOrder(_ values: [Double]) throws -> Double {
        let n = comm.size, rounds = values.count
        let all = try comm.allGather(values)
        var sum = 0.0
        for g in 0..<(rounds * n) { sum += all[(g % n) * rounds + g / n] }
        return sum
    }

    /// Every rank's passes' auxiliary losses and routing summaries (one per round, rank r's
    /// round j being micro-batch j·N + r), added in global micro-batch order and averaged:
    /// what one rank running every micro-batch reports. Every pass has the same layers and names.
    func auxiliariesInGlobalOrder(_ passes: [StepAuxiliaries.Pass]) throws -> StepAuxiliaries {
        var step = StepAuxiliaries()
        guard let first = passes.first else { return step }
        let lossKeys = first.losses.keys.sorted().flatMap { name in first.losses[name]!.keys.sorted().map { (name, $0) } }
        let layers = first.routing.keys.sorted(), experts = layers.map { first.routing[$0]!.load.count }
        let width = lossKeys.count + zip(layers, experts).reduce(0) { $0 + 4 + $1.1 }
        guard width > 0 else { return step }
        let values = passes.flatMap { pass in
            lossKeys.map { pass.losses[$0.0]?[$0.1] ?? 0 } + layers.flatMap { layer -> [Double] in
                let s = pass.routing[layer]!
                return [Double(s.tokens), s.droppedFraction, s.balance, s.zLoss] + s.load
            }
        }
        let n = comm.size, rounds = passes.count
        let all = try comm.allGather(values)
        for g in 0..<(rounds * n) {
            var at = ((g % n) * rounds + g / n) * width
            var losses: [String: [Int: Double]] = [:], routing: [Int: RoutingSummary] = [:]
            for (name, layer) in lossKeys { losses[name, default: [:]][layer] = all[at]; at += 1 }
            for (layer, e) in zip(layers, experts) {
                var s = first.routing[layer]!
                (s.tokens, s.droppedFraction, s.balance, s.zLoss) = (Int(all[at]), all[at + 1], all[at + 2], all[at + 3])
                s.load = Array(all[(at + 4)..<(at + 4 + e)])
                routing[layer] = s
                at += 4 + e
            }
            step.add(losses: losses, routing: routing)
        }
        step.average()
        return step
    }

    /// Why `config` cannot run with `parallel.reduction: ordered` on `layout` (nil: it can),
    /// checked before any rank computes, the same on every rank.
    static func problem(_ config: RunConfig, layout: GridLayout) -> TrainingError? {
        func refuse(_ source: String, _ problem: String) -> TrainingError { .orderedReductionUnsupported(source: source, problem: problem) }
        if layout.sequence > 1 {
            return refuse(config.origin(of: "parallel.reduction", "parallel.sequence"), "covers data ranks only; set parallel.sequence=1 or parallel.reduction=allreduce")
        }
        if layout.expert > 1 {
            return refuse(config.origin(of: "parallel.reduction", "parallel.expert"), "covers data ranks only; set parallel.expert=1 or parallel.reduction=allreduce")
        }
        let micro = config.train.microBatch, batch = config.train.globalBatch
        if micro == 0 {
            return refuse(config.origin(of: "parallel.reduction", "train.micro_batch"),
                          "needs train.micro_batch > 0 (sequences per micro-batch, the same on any rank count), e.g. train.micro_batch=1")
        }
        if batch % micro != 0 || (batch / micro) % layout.data != 0 {
            return refuse(config.origin(of: "parallel.reduction", "train.global_batch", "train.micro_batch", "parallel.data"),
                          "needs train.global_batch = \(batch) to be a whole number of train.micro_batch = \(micro) micro-batches, divisible by parallel.data = \(layout.data) data ranks; choose a micro_batch dividing \(batch / layout.data), or a rank count dividing \(batch / micro)")
        }
        return nil
    }
}

extension Trainer {
    /// The step's gradients under `parallel.reduction: ordered` (`OrderedReduction`): each pass
    /// from zero, added in global micro-batch order; returns the global batch's summed loss,
    /// its micro-batches' losses added in the same order.
    func orderedGradients(_ batch: (tokens: [Int32], targets: [Int32]), _ ordered: OrderedReduction) throws -> Double {
        let passes = data.localBatch / microBatch, span = microBatch * data.localLength
        var losses: [Double] = [], figures: [StepAuxiliaries.Pass] = []
        ordered.begin()
        for pass in 0..<passes {
            model.parameters.zeroGradients()
            let rows = (pass * span)..<((pass + 1) * span)
            losses.append(try model.lossAndGradients(tokens: Array(batch.tokens[rows]), targets: Array(batch.targets[rows]), batch: microBatch,
                                                     length: data.localLength, positions: data.positions, gradientScale: 1 / Float(tokensPerStep)))
            figures.append((model.auxiliaryLossesByLayer, model.routing))
            try ordered.add()
        }
        try ordered.finish()
        auxiliaries = try ordered.auxiliariesInGlobalOrder(figures)
        return try ordered.sumInGlobalOrder(losses)
    }
}
