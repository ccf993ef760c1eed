/// The shape of a Llama-family decoder: an embedding, `blocks`, a final RMSNorm and an LM head.
public struct ModelConfig: Equatable, Sendable {
    public var vocabSize: Int
    public var dModel: Int
    public var normEps: Float
    public var tieEmbeddings: Bool
    /// Longest sequence the model is trained or run on (recorded in `config.json`).
    public var maxSequenceLength: Int
    /// One spec per layer, first to last.
    public var blocks: [BlockSpec]

    public init(vocabSize: Int, dModel: Int, normEps: Float = 1e-5, tieEmbeddings: Bool = false,
                maxSequenceLength: Int = 256, blocks: [BlockSpec]) {
        self.vocabSize = vocabSize; self.dModel = dModel; self.normEps = normEps
        self.tieEmbeddings = tieEmbeddings; self.maxSequenceLength = maxSequenceLength; self.blocks = blocks
    }

    /// A model whose layers are all attention + SwiGLU with the same sizes (a plain Llama).
    public init(vocabSize: Int = 256, dModel: Int = 256, layers: Int = 4, heads: Int = 4, kvHeads: Int = 4,
                ffnHidden: Int = 768, ropeTheta: Float = 10_000, normEps: Float = 1e-5, tieEmbeddings: Bool = false,
                maxSequenceLength: Int = 256, attentionKernel: AttentionKernel = .flash,
                sequenceMode: SequenceParallelMode = .ring) {
        let attention = AttentionSpec(heads: heads, kvHeads: kvHeads, headDim: heads > 0 ? dModel / heads : 0, ropeTheta: ropeTheta,
                                      kernel: attentionKernel, sequenceMode: sequenceMode)
        let block = BlockSpec(sequenceMixer: .attention(attention), channelMixer: .swiGLU(hidden: ffnHidden))
        self.init(vocabSize: vocabSize, dModel: dModel, normEps: normEps, tieEmbeddings: tieEmbeddings,
                  maxSequenceLength: maxSequenceLength, blocks: Array(repeating: block, count: max(layers, 0)))
    }

    public var layers: Int { blocks.count }

    /// Problems with these sizes, each naming the keys involved; empty when the model can be built.
    public var problems: [String] {
        var out: [String] = []
        for (key, value) in [("model.vocab_size", vocabSize), ("model.d_model", dModel), ("model.layers", layers)] where value < 1 {
            out.append("\(key) = \(value) must be at least 1")
        }
        for (layer, block) in blocks.enumerated() {
            let at = blocks.count > 1 && blocks.contains(where: { $0 != block }) ? " (layer \(layer))" : ""
            out += block.sequenceMixer.settings.problems(dModel: dModel, at: at) + block.channelMixer.settings.problems(at: at)
            if !out.isEmpty, !at.isEmpty { break }
        }
        var seen = Set<String>()
        return out.filter { seen.insert($0).inserted }
    }

    /// The mixture-of-experts spec of the first MoE layer (nil: a dense model).
    public var moe: MoESpec? { blocks.lazy.compactMap(\.channelMixer.moe).first }

    /// Layers whose feed-forward is a mixture of experts.
    public var moeLayers: [Int] {
        blocks.indices.filter { blocks[$0].channelMixer.kind == .moe }
    }

    /// `config.json` of the equivalent Hugging Face model: `LlamaForCausalLM`, or
    /// `MixtralForCausalLM` when a layer is a mixture of experts (sizes of the first block of
    /// each kind: both have one size per model). Mixtral makes every layer sparse; a model with
    /// dense layers lists them under `tessera_dense_layers` (Hugging Face cannot load those).
    /// A model with layers of another sequence mixer (a Mamba-2 student, or a hybrid) adds the
    /// Phi-Mamba description of every layer (`phiMambaSections`) and names itself Phi-Mamba's `LMHeadModel`; attention
    /// sizes are then those of its first attention layer, if any.
    public var huggingFaceConfig: [String: Any] {
        var config: [String: Any] = [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocabSize, "hidden_size": dModel,
            "num_hidden_layers": layers, "hidden_act": "silu", "max_position_embeddings": maxSequenceLength,
            "rms_norm_eps": Double(normEps), "tie_word_embeddings": tieEmbeddings, "attention_bias": false, "mlp_bias": false,
            "torch_dtype": "float32", "bos_token_id": NSNull(), "eos_token_id": NSNull()]
        if let a = blocks.lazy.compactMap(\.sequenceMixer.attention).first {
            config["num_attention_heads"] = a.heads
            config["num_key_value_heads"] = a.kvHeads
            config["head_dim"] = a.headDim
            config["rope_theta"] = Double(a.ropeTheta)
        }
        if let hidden = blocks.first?.channelMixer.swiGLUHidden { config["intermediate_size"] = hidden }
        if let moe {
            config["architectures"] = ["MixtralForCausalLM"]
            config["model_type"] = "mixtral"
            config["intermediate_size"] = moe.expertHidden
            config["num_local_experts"] = moe.experts
            config["num_experts_per_tok"] = moe.topK
            config["router_aux_loss_coef"] = moe.auxLossCoefficient
            config["router_z_loss_coef"] = moe.zLossCoefficient
            config["output_router_logits"] = false
            config["router_jitter_noise"] = 0.0
            config["sliding_window"] = NSNull()
            config["mlp_bias"] = nil
            if let factor = moe.capacityFactor { config["capacity_factor"] = factor }
            let dense = blocks.indices.filter { !moeLayers.contains($0) }
            if !dense.isEmpty {
                config["tessera_dense_layers"] = dense
                config["tessera_note"] = "layers \(dense.map(String.init).joined(separator: ", ")) are dense (mlp.*), not mixtures of experts: "
                    + "Mixtral has no such layers, so transformers cannot load this layout (tessera export hf refuses it)"
            }
        }
        if attentionLayers.count < layers { config.merge(phiMambaSections) { _, phiMamba in phiMamba } }
        return config
    }
}

import Foundation
