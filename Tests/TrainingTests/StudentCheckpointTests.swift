import Foundation
import Testing
import Checkpointing
import Collectives
import Models
import TensorCore
import Training
import TrainingConfig
import _TestSupport

/// A run trained with `model.sequence_mixer: mamba2` (all-Mamba, or a hybrid) writes a
/// checkpoint the normal loaders take: run.yaml rebuilds the same model, the weights load by
/// name, config.json describes the mixers, and generation from the loaded model works.
@Suite struct StudentCheckpointTests {
    @Test(arguments: ["", "1"])
    func aStudentRunsCheckpointLoadsThroughRunYAML(attentionLayers: String) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory, bytes: 20_000)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 4, batch: 4)
                                   + ["model.sequence_mixer=mamba2", "model.attention_layers=\(attentionLayers)", "model.ssm_chunk_size=4"])
        let trained = try trainInProcess(config, ranks: 1, steps: 4, saveCheckpoint: true)[0]
        let url = try #require(trained.checkpoint)

        let contents = try CheckpointStore.read(url)
        let loaded = try RunConfig(resolvedYAML: contents.runConfig, source: url.path + "/run.yaml")
        #expect(loaded.modelConfig == config.modelConfig)
        #expect(loaded.modelConfig.mixerKinds == (attentionLayers.isEmpty ? ["mamba2", "mamba2"] : ["mamba2", "attention"]))
        let model = try TransformerLM(config: loaded.modelConfig, seed: 0)
        try model.parameters.load(contents.model, source: url.path)
        for (name, values) in trained.namedParameters {
            #expect(Array(model.parameters.values.buffer[model.parameters.entry(name).range]) == values, "\(name) loads as trained")
        }
        #expect(contents.model["model.layers.0.mixer.A_log"] == nil && contents.model["model.layers.0.mixer.in_proj.weight"] != nil)

        // config.json: the Phi-Mamba description of these layers.
        let json = contents.huggingFaceConfig
        #expect(json["mixer_types"] as? [String] == (attentionLayers.isEmpty ? ["discrete_mamba2", "discrete_mamba2"]
                                                                               : ["discrete_mamba2", "llama_attention"]))
        #expect(json["attn_layers"] as? [Int] == (attentionLayers.isEmpty ? [] : [1]))
        #expect(CheckpointSummary.mixers(huggingFaceConfig: json) == (attentionLayers.isEmpty ? "mamba2 in all 2 layers"
                                                                                             : "mamba2 in layer 0; attention in layer 1"))

        // Greedy generation from the loaded checkpoint equals recomputing the whole sequence.
        try expectIncrementalDecodingMatchesFullForward(model, steps: 30)
    }
}
