/// How a model with Mamba-2 layers describes itself in a checkpoint's `config.json`: the
/// layout of Phi-Mamba's `LMHeadModel` config (goombalab/phi-mamba, `assets/sample_config.json`:
/// `LanguageModel`, `MixerModel` and one `Block…` section per run of identical layers, each
/// naming its `CoreType` and the mixer's `core_input`), beside the Hugging Face-style top-level
/// sizes every Tessera `config.json` has. `transformers` has no such model: `tessera export hf`
/// refuses these checkpoints.
extension ModelConfig {
    /// Layers whose sequence mixer is Phi-Mamba's discrete Mamba-2.
    public var mambaLayers: [Int] {
        blocks.indices.filter { if case .mamba2 = blocks[$0].sequenceMixer { return true } else { return false } }
    }

    /// Layers whose sequence mixer is attention (all of them in a transformer; those a hybrid keeps).
    public var attentionLayers: [Int] {
        blocks.indices.filter { if case .attention = blocks[$0].sequenceMixer { return true } else { return false } }
    }

    /// Each layer's sequence mixer kind, first to last: `attention` or `mamba2` (the values of
    /// the config key `model.sequence_mixer`).
    public var mixerKinds: [String] {
        blocks.map { if case .mamba2 = $0.sequenceMixer { return "mamba2" } else { return "attention" } }
    }

    /// Phi-Mamba's module name for a layer's sequence mixer (`CoreType`, without `modules.mixers.`).
    static func phiMambaCoreName(_ mixer: SequenceMixerSpec) -> String {
        switch mixer {
        case .attention: return "llama_attention"
        case .mamba2: return "discrete_mamba2"
        }
    }

    /// The Phi-Mamba-style keys added to `huggingFaceConfig` when a layer is a Mamba-2 mixer:
    /// `architectures` [`LMHeadModel`] (Phi-Mamba's class), `mixer_types` per layer
    /// (`discrete_mamba2` or `llama_attention`), `attn_layers` (the layers that keep attention,
    /// empty for an all-Mamba model), and the `LanguageModel`, `MixerModel`, `Block…` sections.
    /// Block section names sort in layer order (zero-padded first-last layer).
    var phiMambaSections: [String: Any] {
        var out: [String: Any] = [
            "architectures": ["LMHeadModel"], "model_type": "phi_mamba",
            "tessera_format": "Phi-Mamba LMHeadModel config (goombalab/phi-mamba); tensors use its mixer names; transformers cannot load it",
            "mixer_types": blocks.map { Self.phiMambaCoreName($0.sequenceMixer) },
            "attn_layers": attentionLayers,
            "LanguageModel": ["input": ["vocab_size": vocabSize, "pad_vocab_size_multiple": 1, "tie_word_embeddings": tieEmbeddings,
                                        "lm_head_bias": false] as [String: Any]],
            "MixerModel": ["input": ["d_model": dModel, "n_layer": layers, "lm_head_prenorm": "rms", "rms_norm_eps": Double(normEps)] as [String: Any]]]
        let width = String(max(layers - 1, 0)).count
        func padded(_ layer: Int) -> String {
            let text = String(layer)
            return String(repeating: "0", count: max(width - text.count, 0)) + text
        }
        var first = 0
        while first < blocks.count {
            var last = first
            while last + 1 < blocks.count, blocks[last + 1] == blocks[first] { last += 1 }
            let name = "Block" + padded(first) + (last > first ? "-" + padded(last) : "")
            out[name] = blockSection(blocks[first], layers: last - first + 1)
            first = last + 1
        }
        return out
    }

    /// One `Block…` section: `n_layers` identical layers, their feed-forward and their mixer.
    private func blockSection(_ block: BlockSpec, layers count: Int) -> [String: Any] {
        var section: [String: Any] = [
            "n_layers": count, "BlockType": "modules.llama_block",
            "block_input": ["resid_dropout": 0.0, "rms_norm_eps": Double(normEps)] as [String: Any],
            "CoreType": "modules.mixers." + Self.phiMambaCoreName(block.sequenceMixer)]
        switch block.channelMixer {
        case .swiGLU(let hidden):
            section["mlp"] = ["intermediate_size": hidden, "hidden_act": "silu"] as [String: Any]
        case .moe(let moe):
            section["mlp"] = ["intermediate_size": moe.expertHidden, "hidden_act": "silu", "num_local_experts": moe.experts,
                              "num_experts_per_tok": moe.topK] as [String: Any]
        }
        switch block.sequenceMixer {
        case .mamba2(let m):
            let inner = m.heads * m.headDim
            var core: [String: Any] = [
                "d_state": m.stateSize, "n_v_heads": m.heads, "n_qk_heads": m.heads, "d_conv": m.convWidth, "conv_bias": true,
                "chunk_size": m.chunkSize, "activation": "identity", "bias": false, "d_inner": inner, "headdim": m.headDim]
            // Phi-Mamba derives d_inner = expand · d_model; say expand only when that holds.
            if dModel > 0, inner % dModel == 0 { core["expand"] = inner / dModel }
            section["core_input"] = core
        case .attention(let a):
            section["core_input"] = ["num_attention_heads": a.heads, "num_key_value_heads": a.kvHeads, "head_dim": a.headDim,
                                     "rope_theta": Double(a.ropeTheta), "attention_bias": false, "hidden_size": dModel,
                                     "max_position_embeddings": maxSequenceLength] as [String: Any]
        }
        return section
    }
}
