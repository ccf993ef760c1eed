import Testing
import Models
import TensorCore
import _TestSupport

/// The Float32 `TransformerLM` against `ReferenceDecoder`, an independent Float64 Llama built
/// from the naive kernel twins: logits and loss value by value, and the gradient of every
/// parameter tensor separately against central differences of the Float64 loss, with each
/// attention kernel (flash and naive).
@Suite struct ReferenceDecoderTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let label: String
        let config: ModelConfig
        var testDescription: String { label }
    }

    static func config(dModel: Int, heads: Int, kvHeads: Int, tied: Bool) -> ModelConfig {
        ModelConfig(vocabSize: 11, dModel: dModel, layers: 2, heads: heads, kvHeads: kvHeads, ffnHidden: 12, ropeTheta: 100,
                    normEps: 1e-5, tieEmbeddings: tied, maxSequenceLength: 16)
    }

    /// Tied and untied, MHA and GQA, each ~1.7 s of finite differences in a debug build. "4 heads
    /// on 2" is the GQA case where the query-to-kv head map matters (with one kv head every map
    /// is the same); head dimension 4 (d_model 8 with 2 heads) is where RoPE's theta shows up
    /// (with head dimension 2 the only frequency is 1).
    static let gradientCases = [
        Case(label: "MHA 2 heads (head dim 4), untied", config: config(dModel: 8, heads: 2, kvHeads: 2, tied: false)),
        Case(label: "GQA 2 heads on 1 (head dim 4), tied", config: config(dModel: 8, heads: 2, kvHeads: 1, tied: true)),
        Case(label: "GQA 4 heads on 2 (head dim 2), untied", config: config(dModel: 8, heads: 4, kvHeads: 2, tied: false)),
        Case(label: "layers of different FFN widths (12, 7)", config: mixedWidths),
        Case(label: "dense layer then MoE layer (top-2 of 4, aux and z losses)", config: moe(capacity: nil)),
        Case(label: "two MoE layers (top-2 of 3, capacity 1.25)", config: moe(capacity: 1.25, experts: 3, everyLayer: true)),
    ]

    /// Mixture-of-experts layers (Mixtral names), with coefficients large enough that the
    /// auxiliary losses' gradients show.
    static func moe(capacity: Double?, experts: Int = 4, everyLayer: Bool = false) -> ModelConfig {
        let attention = SequenceMixerSpec.attention(AttentionSpec(heads: 2, kvHeads: 1, headDim: 4, ropeTheta: 100))
        let moe = ChannelMixerSpec.moe(MoESpec(experts: experts, topK: 2, expertHidden: 6, capacityFactor: capacity,
                                               auxLossCoefficient: 0.3, zLossCoefficient: 0.05))
        return ModelConfig(vocabSize: 11, dModel: 8, normEps: 1e-5, tieEmbeddings: false, maxSequenceLength: 16,
                           blocks: [BlockSpec(sequenceMixer: attention, channelMixer: everyLayer ? moe : .swiGLU(hidden: 12)),
                                    BlockSpec(sequenceMixer: attention, channelMixer: moe)])
    }

    /// Blocks built from specs may differ per layer: here the feed-forward width.
    static let mixedWidths: ModelConfig = {
        let attention = SequenceMixerSpec.attention(AttentionSpec(heads: 2, kvHeads: 1, headDim: 4, ropeTheta: 100))
        return ModelConfig(vocabSize: 11, dModel: 8, normEps: 1e-5, tieEmbeddings: false, maxSequenceLength: 16,
                           blocks: [BlockSpec(sequenceMixer: attention, channelMixer: .swiGLU(hidden: 12)),
                                    BlockSpec(sequenceMixer: attention, channelMixer: .swiGLU(hidden: 7))])
    }()

    @Test func aModelOfDifferentLayersNamesEachLayersTensorsAsHuggingFaceDoes() throws {
        let model = try TransformerLM(config: Self.mixedWidths, seed: 1)
        let shapes = Dictionary(uniqueKeysWithValues: model.parameters.entries.map { ($0.name, $0.shape) })
        #expect(shapes["model.layers.0.mlp.gate_proj.weight"] == [12, 8] && shapes["model.layers.0.mlp.down_proj.weight"] == [8, 12])
        #expect(shapes["model.layers.1.mlp.up_proj.weight"] == [7, 8] && shapes["model.layers.1.mlp.down_proj.weight"] == [8, 7])
        let perLayer = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        let expected = ["model.embed_tokens.weight"] + (0..<2).flatMap { l in perLayer.map { "model.layers.\(l).\($0).weight" } }
            + ["model.norm.weight", "lm_head.weight"]
        #expect(model.parameters.entries.map(\.name) == expected)
        #expect(model.parameters.entries.allSatisfy { $0.placement == .replicated })
    }

    /// The forward pass is cheap, so logits cover every combination, including GQA with both a
    /// real head map and theta.
    static let logitCases = gradientCases + [
        Case(label: "MHA 2 heads (head dim 4), tied", config: config(dModel: 8, heads: 2, kvHeads: 2, tied: true)),
        Case(label: "GQA 4 heads on 2 (head dim 4), untied", config: config(dModel: 16, heads: 4, kvHeads: 2, tied: false)),
        Case(label: "GQA 4 heads on 2 (head dim 4), tied", config: config(dModel: 16, heads: 4, kvHeads: 2, tied: true)),
    ]

    static let (B, T) = (2, 5)

    /// A model whose weights are far from the default init (N(0, 0.02²), norms 1), so every path
    /// contributes visibly: matrices ~ N(0, 1/fan_in) (attention scores and SwiGLU gates of
    /// order 1), embeddings ~ N(0, 1), norm weights 1 + 0.3·N(0, 1) (all different, so a norm
    /// weight gradient landing on the wrong coordinate shows).
    static func model(_ config: ModelConfig, seed: UInt64 = 7) throws -> TransformerLM {
        let model = try TransformerLM(config: config, seed: seed)
        var rng = RNG(seed: seed, stream: 0x7E57)
        let p = model.parameters
        for e in p.entries {
            for i in e.range {
                let z = rng.nextNormal()
                if e.shape.count == 1 {
                    p.values[i] = Float(1 + 0.3 * z)
                } else if e.name == "model.embed_tokens.weight" {
                    p.values[i] = Float(z)
                } else {
                    p.values[i] = Float(z / Double(e.shape[1]).squareRoot())
                }
            }
        }
        return model
    }

    static func data(_ config: ModelConfig) -> (tokens: [Int32], targets: [Int32]) {
        TransformerLMTests.batch(seed: 3, batch: B, length: T, vocab: config.vocabSize)
    }

    /// Logits of the Float32 model equal the Float64 reference to 1e-5 of the logits' scale:
    /// max |Δ| ≤ 1e-5 · max(1, max |logit|). The scale is the largest logit rather than each
    /// logit because a logit is a dot product whose Float32 error follows the size of its terms,
    /// not of the (possibly cancelling) sum. Float32 rounding through two blocks measures
    /// ≤ 3.3e-6 absolute for logits up to 13 (≤ 2.6e-7 of the scale, ~40× headroom); any
    /// difference in definition (RoPE pairing or frequencies, head map, causal mask, norm,
    /// SwiGLU, tying) moves logits by 1e-2 of their scale or more. The mean loss, computed in
    /// Float64 from those logits, agrees to 1e-5 relative (measured ≤ 4e-8), through both
    /// `lossSum` and `lossAndGradients`.
    /// `config` with every attention block on `kernel`.
    static func on(_ kernel: AttentionKernel, _ config: ModelConfig) -> ModelConfig {
        var config = config
        config.blocks = config.blocks.map { block in
            var block = block
            if var attention = block.sequenceMixer.attention {
                attention.kernel = kernel
                block.sequenceMixer = .attention(attention)
            }
            return block
        }
        return config
    }

    @Test(arguments: logitCases, AttentionKernel.allCases)
    func logitsAndLossMatchTheFloat64Reference(_ c: Case, kernel: AttentionKernel) throws {
        let model = try Self.model(Self.on(kernel, c.config))
        let reference = try ReferenceDecoder(model: model)
        let (tokens, targets) = Self.data(c.config)
        let (B, T) = (Self.B, Self.T)

        let got = try model.logits(tokens: tokens, batch: B, length: T)
        let want = reference.logits(tokens: tokens, batch: B, length: T)
        #expect(got.count == want.count)
        var largest = 1.0, worst = 0.0
        for (a, b) in zip(got, want) {
            largest = max(largest, abs(b))
            worst = a.isNaN ? .infinity : max(worst, abs(Double(a) - b))
        }
        #expect(worst <= 1e-5 * largest,
                "\(c.label): logits differ from the Float64 reference by \(worst) (\(worst / largest) of max |logit| \(largest))")

        let wantLoss = reference.loss(tokens: tokens, targets: targets, batch: B, length: T)
        // The model reports cross-entropy; its MoE layers' weighted auxiliary losses complete the objective.
        let evaluated = try model.lossSum(tokens: tokens, targets: targets, batch: B, length: T) / Double(B * T)
            + model.auxiliaryLosses.values.reduce(0, +)
        let trained = try model.lossAndGradients(tokens: tokens, targets: targets, batch: B, length: T, gradientScale: 1) / Double(B * T)
            + model.auxiliaryLosses.values.reduce(0, +)
        #expect(maxRelativeError([evaluated, trained], [wantLoss, wantLoss]) <= 1e-5,
                "\(c.label): mean loss \(evaluated) (lossSum), \(trained) (lossAndGradients), reference \(wantLoss)")
    }

    /// Every parameter tensor on its own: the Float32 analytic gradient of the mean loss against
    /// central differences (h = 1e-6) of the Float64 reference loss, on every coordinate.
    ///
    /// Bound per tensor: max |analytic − numeric| ≤ 1e-6 + 1e-4 · max |numeric|. The differences
    /// are accurate to ~1e-9 (truncation ~h² ≈ 1e-12, rounding ~ε·loss / h ≈ 1e-9); the Float32
    /// gradients measure ≤ 6e-7 absolute and ≤ 2e-6 · max |g| per tensor, so the bound leaves
    /// ≥ 50× headroom, while a tensor's gradient off by 0.1% of its scale already fails (every
    /// tensor here has max |g| ≥ 0.03, checked below so that no tensor passes by being invisible).
    @Test(arguments: gradientCases, AttentionKernel.allCases)
    func everyParameterTensorGradientMatchesFiniteDifferencesOfTheReference(_ c: Case, kernel: AttentionKernel) throws {
        let model = try Self.model(Self.on(kernel, c.config))
        let (tokens, targets) = Self.data(c.config)
        let (B, T) = (Self.B, Self.T)
        model.parameters.zeroGradients()
        try model.lossAndGradients(tokens: tokens, targets: targets, batch: B, length: T, gradientScale: 1 / Float(B * T))
        let analytic = model.parameters.gradients.array
        var reference = try ReferenceDecoder(model: model)
        let h = 1e-6
        var visibleExperts = Set<String>()
        defer {
            // Most experts take tokens here, so the expert gradients are checked, not skipped.
            let experts = model.parameters.entries.filter { $0.name.hasSuffix(".w1.weight") }.count
            #expect(visibleExperts.count * 3 >= experts * 2, "\(c.label): only \(visibleExperts.count) of \(experts) experts took tokens")
        }

        for entry in model.parameters.entries {
            var worst = (error: 0.0, index: 0, numeric: 0.0), scale = 0.0
            for i in 0..<entry.count {
                let saved = reference.weights[entry.name]![i]
                reference.weights[entry.name]![i] = saved + h
                let up = reference.loss(tokens: tokens, targets: targets, batch: B, length: T)
                reference.weights[entry.name]![i] = saved - h
                let down = reference.loss(tokens: tokens, targets: targets, batch: B, length: T)
                reference.weights[entry.name]![i] = saved
                let numeric = (up - down) / (2 * h)
                let error = abs(Double(analytic[entry.offset + i]) - numeric)
                if error > worst.error || error.isNaN { worst = (error, i, numeric) }
                scale = max(scale, abs(numeric))
            }
            if scale == 0, entry.name.contains(".experts.") {
                // An expert no token was routed to: no gradient at all, in either model.
                #expect(model.parameters.gradients.buffer[entry.range].allSatisfy { $0 == 0 }, "\(c.label): \(entry.name) has no tokens but a gradient")
                continue
            }
            if entry.name.contains(".experts.") { visibleExperts.insert(entry.name.components(separatedBy: ".w")[0]) }
            let bound = 1e-6 + 1e-4 * scale
            #expect(worst.error <= bound, """
                \(c.label): gradient of \(entry.name) \(entry.shape) is wrong: max |analytic − numeric| = \(worst.error) \
                at \(Self.coordinates(worst.index, entry.shape)) (analytic \(analytic[entry.offset + worst.index]), \
                numeric \(worst.numeric)), bound \(bound) for max |g| = \(scale)
                """)
            #expect(scale >= 1e-3, "\(c.label): \(entry.name) barely affects the loss (max |g| = \(scale)); the check cannot see it")
        }
    }

    static func coordinates(_ flat: Int, _ shape: [Int]) -> [Int] {
        var rest = flat, out: [Int] = []
        for size in shape.reversed() { out.insert(rest % size, at: 0); rest /= size }
        return out
    }

    /// Sizes come from the tensors, not a config: widening one layer's FFN with extra gate/up
    /// rows whose down_proj columns are zero is read as a wider layer and leaves the function,
    /// and so the logits, exactly unchanged.
    @Test func referenceReadsPerLayerFFNWidthsFromShapes() throws {
        let config = Self.config(dModel: 8, heads: 4, kvHeads: 2, tied: false)
        let model = try Self.model(config)
        let narrow = try ReferenceDecoder(model: model)
        var dict = model.parameters.stateDict()
        let (d, f, extra) = (8, 12, 5)
        var rng = RNG(seed: 11)
        for name in ["model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"] {
            let rows = dict[name]!.scalars + (0..<(extra * d)).map { _ in Float(rng.nextNormal()) }
            dict[name] = Tensor(shape: [f + extra, d], scalars: rows)
        }
        let down = dict["model.layers.1.mlp.down_proj.weight"]!.scalars
        dict["model.layers.1.mlp.down_proj.weight"] = Tensor(shape: [d, f + extra], scalars: (0..<d).flatMap {
            Array(down[($0 * f)..<(($0 + 1) * f)]) + [Float](repeating: 0, count: extra)
        })
        let wide = try ReferenceDecoder(dict, heads: 4, kvHeads: 2, ropeTheta: 100, normEps: Double(config.normEps), tieEmbeddings: false)
        #expect(wide.layers.map(\.ffnHidden) == [f, f + extra])
        let (tokens, _) = Self.data(config)
        #expect(wide.logits(tokens: tokens, batch: Self.B, length: Self.T) == narrow.logits(tokens: tokens, batch: Self.B, length: Self.T))
    }

    @Test func referenceRejectsIncompleteOrForeignStateDictsNamingTheTensor() throws {
        let model = try Self.model(Self.config(dModel: 8, heads: 2, kvHeads: 1, tied: false))
        let dict = model.parameters.stateDict()
        func build(_ dict: StateDict, kvHeads: Int = 1, tied: Bool = false) throws -> ReferenceDecoder {
            try ReferenceDecoder(dict, heads: 2, kvHeads: kvHeads, ropeTheta: 100, normEps: 1e-5, tieEmbeddings: tied)
        }
        var missing = dict
        missing["model.layers.1.self_attn.k_proj.weight"] = nil
        #expect(throws: ReferenceDecoder.Problem.missing("model.layers.1.self_attn.k_proj.weight")) { try build(missing) }
        #expect(throws: ReferenceDecoder.Problem.unexpected("lm_head.weight")) { try build(dict, tied: true) }
        var foreign = dict
        foreign["model.layers.0.self_attn.q_proj.bias"] = Tensor(zeros: [8])
        #expect(throws: ReferenceDecoder.Problem.unexpected("model.layers.0.self_attn.q_proj.bias")) { try build(foreign) }
        #expect(throws: ReferenceDecoder.Problem.badShape("model.layers.0.self_attn.k_proj.weight", [4, 8], expected: "[8, 8]")) {
            try build(dict, kvHeads: 2)
        }
    }
}
