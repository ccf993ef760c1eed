/// The shape of a Llama-family decoder. Every size comes from the run config.
public struct ModelConfig: Codable, Equatable, Sendable {
    public var vocabSize: Int
    public var dModel: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var ffnHidden: Int
    public var ropeTheta: Float
    public var normEps: Float
    public var tieEmbeddings: Bool
    /// Longest sequence the model is trained or run on (recorded in `config.json`).
    public var maxSequenceLength: Int

    public init(vocabSize: Int = 256, dModel: Int = 256, layers: Int = 4, heads: Int = 4, kvHeads: Int = 4,
                ffnHidden: Int = 768, ropeTheta: Float = 10_000, normEps: Float = 1e-5, tieEmbeddings: Bool = false,
                maxSequenceLength: Int = 256) {
        self.vocabSize = vocabSize; self.dModel = dModel; self.layers = layers; self.heads = heads
        self.kvHeads = kvHeads; self.ffnHidden = ffnHidden; self.ropeTheta = ropeTheta; self.normEps = normEps
        self.tieEmbeddings = tieEmbeddings; self.maxSequenceLength = maxSequenceLength
    }

    public var headDim: Int { dModel / heads }

    /// Problems with these sizes, each naming the keys involved; empty when the model can be built.
    public var problems: [String] {
        var out: [String] = []
        for (key, value) in [("model.vocab_size", vocabSize), ("model.d_model", dModel), ("model.layers", layers),
                             ("model.heads", heads), ("model.kv_heads", kvHeads), ("model.ffn_hidden", ffnHidden)] where value < 1 {
            out.append("\(key) = \(value) must be at least 1")
        }
        if heads > 0, dModel % heads != 0 { out.append("model.d_model = \(dModel) is not divisible by model.heads = \(heads)") }
        if kvHeads > 0, heads % kvHeads != 0 { out.append("model.heads = \(heads) is not divisible by model.kv_heads = \(kvHeads)") }
        if heads > 0, dModel % heads == 0, headDim % 2 != 0 { out.append("head dimension d_model / heads = \(headDim) must be even for RoPE") }
        return out
    }

    /// `config.json` of the equivalent Hugging Face `LlamaForCausalLM`.
    public var huggingFaceConfig: [String: Any] {
        ["architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocabSize,
         "hidden_size": dModel, "intermediate_size": ffnHidden, "num_hidden_layers": layers,
         "num_attention_heads": heads, "num_key_value_heads": kvHeads, "head_dim": headDim,
         "hidden_act": "silu", "max_position_embeddings": maxSequenceLength, "rms_norm_eps": Double(normEps),
         "rope_theta": Double(ropeTheta), "tie_word_embeddings": tieEmbeddings, "attention_bias": false,
         "mlp_bias": false, "torch_dtype": "float32", "bos_token_id": NSNull(), "eos_token_id": NSNull()]
    }
}

import Foundation
