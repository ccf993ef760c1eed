import _TestSupport
import Checkpointing
import Distillation
import Foundation
import Models
import TensorCore
import Testing
import Training
import TrainingConfig

/// A student's checkpoint `config.json`: Phi-Mamba's `LMHeadModel` layout describing every
/// layer (which mixer, its sizes), consistent with the tensors; `tessera export hf` refuses it.
@Suite struct StudentConfigTests {
    static func teacher(layers: Int) -> ModelConfig {
        ModelConfig(vocabSize: 32, dModel: 16, layers: layers, heads: 2, kvHeads: 1, ffnHidden: 24, maxSequenceLength: 16)
    }

    static func student(layers: Int = 3, keep: [Int]) throws -> ModelConfig {
        try StudentBuilder.studentConfig(teacher: teacher(layers: layers), keepAttention: DistillLayerList(layers: keep), chunkSize: 8)
    }

    /// config.json as the checkpoint writer stores it (JSON round trip).
    static func stored(_ config: ModelConfig) throws -> [String: Any] {
        let data = try JSONSerialization.data(withJSONObject: config.huggingFaceConfig, options: [.sortedKeys])
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    @Test func aHybridNamesEachLayersMixerAndTheLayersThatKeepAttention() throws {
        let json = try Self.stored(try Self.student(keep: [1]))
        #expect(json["architectures"] as? [String] == ["LMHeadModel"])
        #expect(json["mixer_types"] as? [String] == ["discrete_mamba2", "llama_attention", "discrete_mamba2"])
        #expect(json["attn_layers"] as? [Int] == [1])
        #expect((json["tessera_format"] as? String)?.contains("transformers cannot load it") == true)
        // Hugging Face-style sizes stay; the attention sizes are the kept layer's.
        #expect(json["hidden_size"] as? Int == 16 && json["num_hidden_layers"] as? Int == 3 && json["vocab_size"] as? Int == 32)
        #expect(json["num_attention_heads"] as? Int == 2 && json["num_key_value_heads"] as? Int == 1 && json["head_dim"] as? Int == 8)
        // Phi-Mamba's sections: one per run of identical layers, in layer order.
        let blocks = json.keys.filter { $0.hasPrefix("Block") }.sorted()
        #expect(blocks == ["Block0", "Block1", "Block2"])
        let mamba = json["Block0"] as! [String: Any], attention = json["Block1"] as! [String: Any]
        #expect(mamba["CoreType"] as? String == "modules.mixers.discrete_mamba2" && mamba["n_layers"] as? Int == 1)
        #expect(attention["CoreType"] as? String == "modules.mixers.llama_attention")
        let core = mamba["core_input"] as! [String: Any]
        #expect(core["d_state"] as? Int == 8 && core["n_v_heads"] as? Int == 2 && core["n_qk_heads"] as? Int == 2)
        #expect(core["d_conv"] as? Int == 4 && core["expand"] as? Int == 1 && core["chunk_size"] as? Int == 8 && core["headdim"] as? Int == 8)
        #expect(core["conv_bias"] as? Bool == true && core["bias"] as? Bool == false && core["activation"] as? String == "identity")
        #expect((attention["core_input"] as! [String: Any])["num_key_value_heads"] as? Int == 1)
        #expect((mamba["mlp"] as! [String: Any])["intermediate_size"] as? Int == 24)
        let model = (json["MixerModel"] as! [String: Any])["input"] as! [String: Any]
        #expect(model["d_model"] as? Int == 16 && model["n_layer"] as? Int == 3)
        #expect(CheckpointSummary.mixers(huggingFaceConfig: json) == "mamba2 in layers 0, 2; attention in layer 1", "tessera ckpt show")
    }

    @Test func anAllMambaStudentIsOneBlockSectionAndATeacherStaysLlama() throws {
        let json = try Self.stored(try Self.student(keep: []))
        #expect(json["attn_layers"] as? [Int] == [])
        #expect(json["num_attention_heads"] == nil, "no attention layer, no attention sizes")
        #expect(json.keys.filter { $0.hasPrefix("Block") } == ["Block0-2"])
        #expect((json["Block0-2"] as! [String: Any])["n_layers"] as? Int == 3)
        let teacher = try Self.stored(Self.teacher(layers: 3))
        #expect(teacher["architectures"] as? [String] == ["LlamaForCausalLM"])
        #expect(teacher["mixer_types"] == nil && teacher.keys.allSatisfy { !$0.hasPrefix("Block") })
        #expect(CheckpointSummary.mixers(huggingFaceConfig: json) == "mamba2 in all 3 layers")
        #expect(CheckpointSummary.mixers(huggingFaceConfig: teacher) == "attention in all 3 layers")
    }

    /// Loaders read the Block sections in key order: with 10 or more layers the names are
    /// zero-padded so sorted keys are layer order, and the sections cover every layer once.
    @Test func blockSectionsSortInLayerOrderAndCoverEveryLayer() throws {
        let json = try Self.stored(try Self.student(layers: 12, keep: [0, 10]))
        let blocks = json.keys.filter { $0.hasPrefix("Block") }.sorted()
        #expect(blocks == ["Block00", "Block01-09", "Block10", "Block11"])
        var kinds: [String] = []
        for name in blocks {
            let section = json[name] as! [String: Any]
            let core = (section["CoreType"] as! String).replacingOccurrences(of: "modules.mixers.", with: "")
            kinds += Array(repeating: core, count: section["n_layers"] as! Int)
        }
        #expect(kinds == json["mixer_types"] as? [String])
    }

    /// The sizes config.json gives are those of the tensors, as Phi-Mamba's Mixer derives them
    /// (in_proj: 2·d_inner + 2·n_qk_heads·d_state + n_v_heads rows; conv: d_inner + 2·n_qk_heads·d_state channels).
    @Test func theDescribedSizesAreTheTensorsShapes() throws {
        let config = try Self.student(keep: [1])
        let json = try Self.stored(config)
        let parameters = try TransformerLM(config: config, seed: 1).parameters
        let core = (json["Block2"] as! [String: Any])["core_input"] as! [String: Any]
        let (inner, heads, qkHeads, state, conv) = (core["d_inner"] as! Int, core["n_v_heads"] as! Int, core["n_qk_heads"] as! Int,
                                                    core["d_state"] as! Int, core["d_conv"] as! Int)
        let p = "model.layers.2.mixer."
        #expect(parameters.entry(p + "in_proj.weight").shape == [2 * inner + 2 * qkHeads * state + heads, 16])
        #expect(parameters.entry(p + "conv1d.weight").shape == [inner + 2 * qkHeads * state, 1, conv])
        #expect(parameters.entry(p + "z_bias").shape == [inner] && parameters.entry(p + "D").shape == [heads])
        #expect(parameters.entry(p + "out_proj.weight").shape == [16, inner])
        #expect(parameters.entries.contains { $0.name == "model.layers.1.self_attn.q_proj.weight" })
    }

    /// `tessera export hf` refuses a student in one line saying why, and writes nothing.
    @Test(arguments: [[Int](), [1]])
    func exportToHuggingFaceIsRefused(keep: [Int]) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let config = try Self.student(keep: keep)
        let parameters = try TransformerLM(config: config, seed: 1).parameters.stateDict()
        let output = directory.url.appendingPathComponent("hf")
        do {
            try HuggingFaceExport.write(model: parameters, config: try Self.stored(config), checkpoint: "ckpt", notes: "", to: output)
            Issue.record("a student was exported")
        } catch let error as SoupError {
            let mamba = config.mambaLayers.map(String.init).joined(separator: ", ")
            #expect(error.description == "cannot export ckpt: layers [\(mamba)] are Mamba-2 mixers, which transformers cannot load; the checkpoint's config.json already describes the model Phi-Mamba-style (mixer_types, a Block section per run of layers)")
            #expect(!error.description.contains("\n"))
        }
        #expect(!FileManager.default.fileExists(atPath: output.path))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.url.path).isEmpty, "no temporary directory left")
    }
}
