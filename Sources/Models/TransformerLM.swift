import Kernels
import TensorCore

/// The Llama-family decoder of DESIGN.md with explicit forward and backward passes.
///
/// embed → N × [x + attn(rmsnorm(x)); x + swiglu(rmsnorm(x))] → rmsnorm → lm_head → loss.
/// Parameters use Hugging Face Llama names and `[out, in]` layouts. Activations for the backward
/// pass live in a workspace sized for the last (batch, length) seen.
///
/// Initialisation (seeded, declaration order): linear and embedding weights ~ N(0, 0.02²);
/// the residual output projections (`o_proj`, `down_proj`) ~ N(0, (0.02/√(2·layers))²), as in
/// GPT-2; norm weights 1.
public final class TransformerLM {
    public let config: ModelConfig
    public let parameters: ParameterSet
    let layerOffsets: [LayerOffsets]
    let embedOffset: Int, finalNormOffset: Int, headOffset: Int
    var workspace: Workspace?

    struct LayerOffsets {
        var inputNorm, q, k, v, o, postNorm, gate, up, down: Int
        var range: Range<Int>
    }

    public init(config: ModelConfig, seed: UInt64) throws {
        guard config.problems.isEmpty else { throw ModelError.invalidConfig(config.problems) }
        self.config = config
        parameters = ParameterSet(Self.declarations(config))
        let p = parameters
        layerOffsets = (0..<config.layers).map { l in
            let name = { (suffix: String) in p.entry("model.layers.\(l).\(suffix)").offset }
            let first = name("input_layernorm.weight")
            let last = p.entry("model.layers.\(l).mlp.down_proj.weight")
            return LayerOffsets(inputNorm: first, q: name("self_attn.q_proj.weight"), k: name("self_attn.k_proj.weight"),
                                v: name("self_attn.v_proj.weight"), o: name("self_attn.o_proj.weight"),
                                postNorm: name("post_attention_layernorm.weight"), gate: name("mlp.gate_proj.weight"),
                                up: name("mlp.up_proj.weight"), down: last.offset, range: first..<last.range.upperBound)
        }
        embedOffset = p.entry("model.embed_tokens.weight").offset
        finalNormOffset = p.entry("model.norm.weight").offset
        headOffset = config.tieEmbeddings ? embedOffset : p.entry("lm_head.weight").offset
        initialize(seed: seed)
    }

    /// Parameter names and shapes, in Hugging Face Llama naming.
    public static func declarations(_ c: ModelConfig) -> [(String, [Int])] {
        let d = c.dModel, qOut = c.heads * c.headDim, kvOut = c.kvHeads * c.headDim
        var out: [(String, [Int])] = [("model.embed_tokens.weight", [c.vocabSize, d])]
        for l in 0..<c.layers {
            let prefix = "model.layers.\(l)."
            out += [(prefix + "input_layernorm.weight", [d]),
                    (prefix + "self_attn.q_proj.weight", [qOut, d]),
                    (prefix + "self_attn.k_proj.weight", [kvOut, d]),
                    (prefix + "self_attn.v_proj.weight", [kvOut, d]),
                    (prefix + "self_attn.o_proj.weight", [d, qOut]),
                    (prefix + "post_attention_layernorm.weight", [d]),
                    (prefix + "mlp.gate_proj.weight", [c.ffnHidden, d]),
                    (prefix + "mlp.up_proj.weight", [c.ffnHidden, d]),
                    (prefix + "mlp.down_proj.weight", [d, c.ffnHidden])]
        }
        out.append(("model.norm.weight", [d]))
        if !c.tieEmbeddings { out.append(("lm_head.weight", [c.vocabSize, d])) }
        return out
    }

    func initialize(seed: UInt64) {
        var rng = RNG(seed: seed, stream: 0x1A17)
        let residualStd = 0.02 / (2 * Double(config.layers)).squareRoot()
        for e in parameters.entries {
            let p = parameters.values.pointer + e.offset
            if e.shape.count == 1 {
                p.update(repeating: 1, count: e.count)
            } else {
                let std = e.name.hasSuffix("o_proj.weight") || e.name.hasSuffix("down_proj.weight") ? residualStd : 0.02
                for i in 0..<e.count { p[i] = Float(rng.nextNormal() * std) }
            }
        }
    }

    public var parameterCount: Int { parameters.count }

    /// Forward FLOPs per token of the matrix products (2 per multiply-add), without attention scores.
    public var matmulFlopsPerToken: Double {
        let c = config
        let perLayer = 2.0 * Double(c.dModel) * Double((c.heads + 2 * c.kvHeads) * c.headDim + c.heads * c.headDim + 3 * c.ffnHidden)
        return Double(c.layers) * perLayer + 2 * Double(c.dModel * c.vocabSize)
    }

    /// Forward FLOPs per token of attention scores and values at sequence length T (causal: half).
    public func attentionFlopsPerToken(length: Int) -> Double {
        2.0 * 2 * Double(config.layers * config.heads * config.headDim) * Double(length) / 2
    }
}
