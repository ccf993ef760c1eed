/// How a model with layers other than attention (Mamba-2, or a registered kind) describes itself in a checkpoint's `config.json`: the
/// layout of Phi-Mamba's `LMHeadModel` config (goombalab/phi-mamba, `assets/sample_config.json`:
/// `LanguageModel`, `MixerModel` and one `Block…` section per run of identical layers, each
/// naming its `CoreType` and the mixer's `core_input`), beside the Hugging Face-style top-level
/// sizes every Tessera `config.json` has. `transformers` has no such model: `tessera export hf`
/// refuses these checkpoints.
extension ModelConfig {
    /// Layers whose sequence mixer is of `kind`.
    public func layers(of kind: SequenceMixerKind) -> [Int] { blocks.indices.filter { blocks[$0].sequenceMixer.kind == kind } }

    /// Layers whose sequence mixer is Phi-Mamba's discrete Mamba-2.
    public var mambaLayers: [Int] { layers(of: .mamba2) }

    /// Layers whose sequence mixer is attention (all of them in a transformer; those a hybrid keeps).
    public var attentionLayers: [Int] { layers(of: .attention) }

    /// Each layer's sequence mixer kind, first to last (`attention`, `mamba2`, ...: the values
    /// of the config key `model.sequence_mixer`).
    public var mixerKinds: [String] { blocks.map(\.sequenceMixer.kind.name) }

    /// The Phi-Mamba-style keys added to `huggingFaceConfig` when a layer is not attention:
    /// `architectures` [`LMHeadModel`] (Phi-Mamba's class), `mixer_types` per layer (its kind's
    /// `coreName`: `discrete_mamba2`, `llama_attention`, ...), `attn_layers` (the layers that keep attention,
    /// empty for an all-Mamba model), and the `LanguageModel`, `MixerModel`, `Block…` sections.
    /// Block section names sort in layer order (zero-padded first-last layer).
    var phiMambaSections: [String: Any] {
        var out: [String: Any] = [
            "architectures": ["LMHeadModel"], "model_type": "phi_mamba",
            "tessera_format": "Phi-Mamba LMHeadModel config (goombalab/phi-mamba); tensors use its mixer names; transformers cannot load it",
            "mixer_types": blocks.map(\.sequenceMixer.kind.coreName),
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
        [
            "n_layers": count, "BlockType": "modules.llama_block",
            "block_input": ["resid_dropout": 0.0, "rms_norm_eps": Double(normEps)] as [String: Any],
            "CoreType": "modules.mixers." + block.sequenceMixer.kind.coreName,
            "mlp": block.channelMixer.settings.phiMambaMLP, "core_input": block.sequenceMixer.settings.phiMambaCoreInput(model: self)]
    }
}
