import Testing
import Checkpointing
import Collectives
import Foundation
import Models
import TensorCore
import Training
import TrainingConfig
import _TestSupport

@Suite struct HuggingFaceExportTests {
    static let dense = ["model.d_model=16", "model.layers=2", "model.heads=2", "model.kv_heads=1", "model.ffn_hidden=24", "data.seq_len=16"]
    static let moe = dense + ["moe.experts=4", "moe.top_k=2", "moe.expert_hidden=8"]

    /// A freshly initialised model of `overrides`, its parameters and `config.json`.
    static func model(_ overrides: [String]) throws -> (StateDict, [String: Any]) {
        let config = try RunConfig(file: nil, overrides: overrides)
        let model = try TransformerLM(config: config.modelConfig, seed: 5, grid: try ProcessGrid(world: SingleProcessCommunicator(), data: 1))
        return (model.parameters.stateDict(), config.modelConfig.huggingFaceConfig)
    }

    @Test(arguments: [("LlamaForCausalLM", false), ("MixtralForCausalLM", true)])
    func writesTheFilesNamesAndConfigTransformersExpects(architecture: String, experts: Bool) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (parameters, config) = try Self.model(experts ? Self.moe : Self.dense)
        let output = directory.url.appendingPathComponent("hf")
        let files = try HuggingFaceExport.write(model: parameters, config: config, checkpoint: "test", notes: "notes", to: output, maxShardBytes: 8_000)
        #expect(Set(files) == Set(try FileManager.default.contentsOfDirectory(atPath: output.path)))
        #expect(files.contains("config.json") && files.contains("model.safetensors.index.json") && files.contains("README.md"))
        let shards = files.filter { $0.hasSuffix(".safetensors") }.sorted()
        #expect(shards.count > 1 && shards.first == "model-00001-of-0000\(shards.count).safetensors", "sharded by maxShardBytes")

        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("config.json"))) as! [String: Any]
        #expect(json["architectures"] as? [String] == [architecture])
        for key in ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                    "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings", "model_type"] {
            #expect(json[key] != nil, "config.json lacks \(key)")
        }
        if experts {
            #expect(json["num_local_experts"] as? Int == 4 && json["num_experts_per_tok"] as? Int == 2 && json["intermediate_size"] as? Int == 8)
            // transformers checks types strictly: floats keep their decimal point.
            let text = try String(contentsOf: output.appendingPathComponent("config.json"), encoding: .utf8)
            #expect(text.contains("\"router_jitter_noise\": 0.0"))
        }

        // The index maps every tensor to its shard; the shards hold exactly the parameters (round trip).
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("model.safetensors.index.json"))) as! [String: Any]
        let weightMap = index["weight_map"] as! [String: String]
        #expect(Set(weightMap.keys) == Set(parameters.names))
        var back = StateDict()
        for shard in shards {
            for (name, tensor) in try SafeTensors.read(output.appendingPathComponent(shard)).tensors.entries {
                #expect(weightMap[name] == shard)
                back[name] = tensor
            }
        }
        for (name, tensor) in parameters.entries { #expect(back[name] == tensor, "\(name)") }
        let expected = try HuggingFaceExport.expectedTensors(config: json, checkpoint: "test")
        #expect(Set(expected.map(\.name)) == Set(parameters.names))
        if experts {
            #expect(parameters["model.layers.1.block_sparse_moe.experts.3.w2.weight"]?.shape == [16, 8])
            #expect(parameters["model.layers.0.block_sparse_moe.gate.weight"]?.shape == [4, 16])
        } else {
            #expect(parameters["model.layers.1.mlp.down_proj.weight"]?.shape == [16, 24])
        }
    }

    @Test func refusesAnExistingOutputAMissingTensorAndDenseLayersInAMixtral() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (parameters, config) = try Self.model(Self.dense)
        let output = directory.url.appendingPathComponent("hf")
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: output.appendingPathComponent("mine.txt"))
        #expect(throws: SoupError.outputNotEmpty(path: output.path)) {
            try HuggingFaceExport.write(model: parameters, config: config, checkpoint: "c", notes: "", to: output)
        }
        #expect(try String(contentsOf: output.appendingPathComponent("mine.txt"), encoding: .utf8) == "keep")

        var fewer = parameters
        fewer["lm_head.weight"] = nil
        let missing = #expect(throws: SoupError.self) {
            try HuggingFaceExport.write(model: fewer, config: config, checkpoint: "c", notes: "", to: directory.url.appendingPathComponent("a"))
        }
        #expect(missing?.description.contains("lm_head.weight") == true)

        let (mixed, mixedConfig) = try Self.model(Self.moe + ["moe.layers=every 2"])
        let dense = #expect(throws: SoupError.self) {
            try HuggingFaceExport.write(model: mixed, config: mixedConfig, checkpoint: "c", notes: "", to: directory.url.appendingPathComponent("b"))
        }
        #expect(dense?.description.contains("dense") == true)
        #expect(!FileManager.default.fileExists(atPath: directory.file("a")) && !FileManager.default.fileExists(atPath: directory.file("b")))
    }
}
