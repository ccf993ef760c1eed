import Testing
import Models
import TensorCore
import _TestSupport

@Suite struct TransformerLMTests {
    static func tinyConfig(tied: Bool = false) -> ModelConfig {
        ModelConfig(vocabSize: 11, dModel: 8, layers: 2, heads: 2, kvHeads: 1, ffnHidden: 12, ropeTheta: 100,
                    normEps: 1e-5, tieEmbeddings: tied, maxSequenceLength: 16)
    }

    static func batch(seed: UInt64, batch: Int, length: Int, vocab: Int) -> (tokens: [Int32], targets: [Int32]) {
        var rng = RNG(seed: seed)
        let stream = (0..<(batch * (length + 1))).map { _ in Int32(rng.nextInt(below: vocab)) }
        var tokens: [Int32] = [], targets: [Int32] = []
        for b in 0..<batch {
            let row = stream[(b * (length + 1))..<((b + 1) * (length + 1))]
            tokens += row.dropLast()
            targets += row.dropFirst()
        }
        return (tokens, targets)
    }

    /// Whole-model gradient check: analytic gradients of the mean loss against central
    /// differences of the loss (summed in Float64) on a sample of every parameter tensor.
    @Test(arguments: [false, true])
    func wholeModelGradientMatchesFiniteDifferences(tied: Bool) throws {
        let config = Self.tinyConfig(tied: tied)
        let model = try TransformerLM(config: config, seed: 7)
        // Larger weights than the default init make every path contribute visibly.
        for i in 0..<model.parameters.count where model.parameters.values[i] != 1 { model.parameters.values[i] *= 15 }
        let (B, T) = (2, 5)
        let data = Self.batch(seed: 3, batch: B, length: T, vocab: config.vocabSize)
        let scale = 1 / Float(B * T)
        model.parameters.zeroGradients()
        model.lossAndGradients(tokens: data.tokens, targets: data.targets, batch: B, length: T, gradientScale: scale)
        let analytic = model.parameters.gradients.array

        var rng = RNG(seed: 99)
        var picked: [Int] = []
        for entry in model.parameters.entries {
            for _ in 0..<4 { picked.append(entry.offset + rng.nextInt(below: entry.count)) }
        }
        let h: Float = 4e-3
        var numeric: [Double] = []
        for i in picked {
            let saved = model.parameters.values[i]
            model.parameters.values[i] = saved + h
            let up = model.lossSum(tokens: data.tokens, targets: data.targets, batch: B, length: T)
            model.parameters.values[i] = saved - h
            let down = model.lossSum(tokens: data.tokens, targets: data.targets, batch: B, length: T)
            model.parameters.values[i] = saved
            numeric.append((up - down) / Double(2 * h) / Double(B * T))
        }
        let error = GradientCheck.relativeError(picked.map { analytic[$0] }, numeric, floor: 1e-2)
        #expect(error < 1e-2, "relative gradient error \(error)")
    }

    @Test func gradientRangesArriveOnceEachInBackwardOrder() throws {
        let model = try TransformerLM(config: Self.tinyConfig(), seed: 1)
        let data = Self.batch(seed: 4, batch: 1, length: 3, vocab: 11)
        var ranges: [Range<Int>] = []
        model.lossAndGradients(tokens: data.tokens, targets: data.targets, batch: 1, length: 3, gradientScale: 1) { ranges.append($0) }
        let p = model.parameters
        #expect(ranges.first == p.entry("lm_head.weight").range)
        #expect(ranges.last == p.entry("model.embed_tokens.weight").range)
        // Disjoint, descending and covering every parameter.
        #expect(ranges.map(\.count).reduce(0, +) == p.count)
        for (a, b) in zip(ranges, ranges.dropFirst()) { #expect(b.upperBound == a.lowerBound) }
    }

    @Test func parameterNamesFollowHuggingFaceLlama() throws {
        let model = try TransformerLM(config: Self.tinyConfig(), seed: 1)
        let names = model.parameters.entries.map(\.name)
        #expect(names.contains("model.layers.1.self_attn.k_proj.weight"))
        #expect(model.parameters.entry("model.layers.0.self_attn.k_proj.weight").shape == [4, 8])   // kv heads 1 × head dim 4
        #expect(model.parameters.entry("model.layers.0.mlp.down_proj.weight").shape == [8, 12])
        #expect(names.first == "model.embed_tokens.weight" && names.last == "lm_head.weight")
    }

    @Test func invalidShapesAreRejectedNamingTheKeys() {
        let config = ModelConfig(vocabSize: 11, dModel: 8, layers: 2, heads: 3, kvHeads: 1, ffnHidden: 12, ropeTheta: 100)
        #expect(throws: ModelError.self) { try TransformerLM(config: config, seed: 1) }
        #expect(config.problems.contains { $0.contains("model.d_model = 8") && $0.contains("model.heads = 3") })
    }

    @Test func sameSeedSameWeightsAndStateDictRoundTrips() throws {
        let a = try TransformerLM(config: Self.tinyConfig(), seed: 5), b = try TransformerLM(config: Self.tinyConfig(), seed: 5)
        #expect(a.parameters.values.array == b.parameters.values.array)
        let c = try TransformerLM(config: Self.tinyConfig(), seed: 6)
        #expect(c.parameters.values.array != a.parameters.values.array)
        try c.parameters.load(a.parameters.stateDict(), source: "test")
        #expect(c.parameters.values.array == a.parameters.values.array)
    }
}
