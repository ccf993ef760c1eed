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

    // Gradients and logits are checked tensor by tensor against a Float64 reference model in
    // ReferenceDecoderTests.

    @Test func gradientRangesArriveOnceEachInBackwardOrder() throws {
        let model = try TransformerLM(config: Self.tinyConfig(), seed: 1)
        let data = Self.batch(seed: 4, batch: 1, length: 3, vocab: 11)
        var ranges: [Range<Int>] = []
        try model.lossAndGradients(tokens: data.tokens, targets: data.targets, batch: 1, length: 3, gradientScale: 1) { ranges.append($0) }
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
