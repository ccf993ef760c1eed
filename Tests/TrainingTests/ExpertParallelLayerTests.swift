import Testing
import Collectives
import Models
import TensorCore
import Training
import _TestSupport

/// Expert parallelism gives what one rank gives, for one forward and backward pass of a whole
/// MoE model: logits of every token, the loss, the auxiliary losses and every parameter's
/// gradient (after reduction by placement), on threads standing for ranks.
@Suite struct ExpertParallelLayerTests {
    struct Layout: Sendable, CustomTestStringConvertible {
        let ranks: Int, expert: Int, experts: Int
        var capacity: Double? = nil
        var testDescription: String {
            "\(ranks) ranks, expert \(expert), \(experts) experts" + (capacity.map { ", capacity \($0)" } ?? "")
        }
    }

    static let layouts = [
        Layout(ranks: 2, expert: 2, experts: 4),
        Layout(ranks: 4, expert: 4, experts: 4),
        Layout(ranks: 3, expert: 3, experts: 6),
        Layout(ranks: 4, expert: 2, experts: 4),                   // data 4 = 2 replicas × expert 2
        Layout(ranks: 2, expert: 2, experts: 4, capacity: 0.75),   // drops pairs in global position order
        Layout(ranks: 4, expert: 4, experts: 4, capacity: 0),      // no rank sends any row, every expert is empty
    ]

    static func config(experts: Int, capacity: Double?) -> ModelConfig {
        let attention = SequenceMixerSpec.attention(AttentionSpec(heads: 2, kvHeads: 1, headDim: 4, ropeTheta: 100))
        let moe = ChannelMixerSpec.moe(MoESpec(experts: experts, topK: 2, expertHidden: 6, capacityFactor: capacity,
                                               auxLossCoefficient: 0.1, zLossCoefficient: 0.01))
        return ModelConfig(vocabSize: 13, dModel: 8, maxSequenceLength: 16,
                           blocks: [BlockSpec(sequenceMixer: attention, channelMixer: moe), BlockSpec(sequenceMixer: attention, channelMixer: moe)])
    }

    /// What one rank computed: logits of its tokens, its loss sum, the model's weighted auxiliary
    /// losses and routing, and its gradients by name (reduced by placement).
    struct Pass {
        var logits: [Float] = []
        var lossSum = 0.0
        var auxiliary: [String: Double] = [:]
        var routing: [Int: RoutingSummary] = [:]
        var gradients: [String: [Float]] = [:]
        var placements: [String: ParameterPlacement] = [:]
    }

    static func pass(_ config: ModelConfig, grid: ProcessGrid?, tokens: [Int32], targets: [Int32], batch: Int, length: Int,
                     globalTokens: Int) throws -> Pass {
        let model = try TransformerLM(config: config, seed: 31, grid: grid)
        // Weights far from the default init so the routing is not nearly uniform.
        for i in 0..<model.parameters.count where model.parameters.values[i] != 1 { model.parameters.values[i] *= 20 }
        var out = Pass()
        out.logits = try model.logits(tokens: tokens, batch: batch, length: length)
        model.parameters.zeroGradients()
        let reducer = grid.map { GradientReducer(parameters: model.parameters, grid: $0, bucketBytes: 256, overlap: false) }
        out.lossSum = try model.lossAndGradients(tokens: tokens, targets: targets, batch: batch, length: length,
                                             gradientScale: 1 / Float(globalTokens)) { reducer?.ready($0) }
        try reducer?.finish()
        out.auxiliary = model.auxiliaryLosses
        out.routing = model.routing
        for e in model.parameters.entries {
            out.gradients[e.name] = Array(model.parameters.gradients.buffer[e.range])
            out.placements[e.name] = e.placement
        }
        return out
    }

    @Test(arguments: layouts)
    func expertParallelPassesEqualOneRank(_ layout: Layout) throws {
        let config = Self.config(experts: layout.experts, capacity: layout.capacity)
        let (batch, length) = (2 * layout.ranks, 5)
        var rng = RNG(seed: 77)
        let tokens = (0..<(batch * length)).map { _ in Int32(rng.nextInt(below: 13)) }
        let targets = (0..<(batch * length)).map { _ in Int32(rng.nextInt(below: 13)) }
        let single = try Self.pass(config, grid: nil, tokens: tokens, targets: targets, batch: batch, length: length, globalTokens: batch * length)
        if layout.capacity != nil { #expect(single.routing.values.contains { $0.droppedFraction > 0 }, "the capacity should drop pairs") }

        let local = batch / layout.ranks, share = local * length
        let results = InProcessCommunicator.run(size: layout.ranks, timeoutSeconds: 60) { comm -> Pass in
            let grid = try ProcessGrid(world: comm, layout: GridLayout(data: layout.ranks, expert: layout.expert))
            let mine = (comm.rank * share)..<((comm.rank + 1) * share)
            return try Self.pass(config, grid: grid, tokens: Array(tokens[mine]), targets: Array(targets[mine]), batch: local, length: length,
                                 globalTokens: batch * length)
        }
        let passes = try results.map { try $0.get() }
        let lossSum = passes.reduce(0) { $0 + $1.lossSum }
        #expect(maxRelativeError([lossSum], [single.lossSum]) < 1e-5, "loss \(lossSum) vs one rank's \(single.lossSum)")
        var seen = Set<String>()
        for (rank, p) in passes.enumerated() {
            #expect(maxRelativeError(p.logits, Array(single.logits[(rank * share * 13)..<((rank + 1) * share * 13)])) < 1e-5,
                    "rank \(rank)'s logits differ from one rank's")
            #expect(p.auxiliary.keys.sorted() == ["moe_aux", "moe_z"])
            for (name, value) in single.auxiliary { #expect(abs(p.auxiliary[name]! - value) < 1e-6, "rank \(rank): \(name) \(p.auxiliary[name]!) vs \(value)") }
            for (layer, r) in single.routing {
                #expect(maxRelativeError(p.routing[layer]!.load, r.load) < 1e-12 && p.routing[layer]!.droppedFraction == r.droppedFraction)
            }
            for (name, gradient) in p.gradients {
                seen.insert(name)
                #expect(maxRelativeError(gradient, single.gradients[name]!) < 1e-5, "rank \(rank): gradient of \(name) differs from one rank's")
                if name.contains(".experts.") {
                    #expect(p.placements[name]?.shardAxis == .expert, "\(name) on rank \(rank) is \(p.placements[name]!)")
                }
            }
            let held = Set(p.gradients.keys.filter { $0.contains("layers.0.block_sparse_moe.experts.") && $0.hasSuffix("w1.weight") })
            let shard = rank % layout.expert, per = layout.experts / layout.expert
            #expect(held == Set((shard * per..<((shard + 1) * per)).map { "model.layers.0.block_sparse_moe.experts.\($0).w1.weight" }),
                    "rank \(rank) holds \(held.sorted())")
        }
        #expect(seen == Set(single.gradients.keys), "the ranks together hold every parameter of the model")
    }
}
