import _TestSupport
import Distillation
import Foundation
import Models
import TensorCore
import Testing
import Training
import TrainingConfig

/// `model.sequence_mixer`, `model.attention_layers`, `model.ssm_chunk_size`: a Mamba-2 or hybrid
/// model described by its run config, so training from scratch and every checkpoint loader see it.
@Suite struct SequenceMixerConfigTests {
    @Test func mamba2ReplacesAttentionExceptTheKeptLayers() throws {
        let base = try RunConfig(file: nil, overrides: ["model.layers=3", "model.d_model=32", "model.heads=4", "model.kv_heads=2"])
        #expect(base.modelConfig.blocks.allSatisfy { $0.sequenceMixer.kind == .attention })
        let hybrid = try base.applying(["model.sequence_mixer=mamba2", "model.attention_layers= 1 ", "model.ssm_chunk_size=16"])
        #expect(hybrid.model.attentionLayers == "1", "canonical text")
        let blocks = hybrid.modelConfig.blocks
        #expect(blocks[0].sequenceMixer == .mamba2(Mamba2Spec(heads: 4, headDim: 8, chunkSize: 16)))
        #expect(blocks[2].sequenceMixer == blocks[0].sequenceMixer)
        #expect(blocks[1] == base.modelConfig.blocks[1], "the kept layer is the attention layer it was")
        // The config round-trips through run.yaml.
        let again = try RunConfig(resolvedYAML: hybrid.yaml, source: "run.yaml")
        #expect(again.modelConfig == hybrid.modelConfig && again.numericHash == hybrid.numericHash)
    }

    @Test func theHashChangesForMambaModelsOnlyAndNotWithTheChunk() throws {
        let base = try RunConfig(file: nil)
        #expect(base.matchesNumericHash("78a82af90da7ff11"), "attention runs keep the hash they had before these keys")
        // attention_layers means nothing without mamba2: refused rather than ignored.
        let refused = #expect(throws: ConfigError.self) { try base.applying(["model.attention_layers=1"]) }
        #expect("\(refused.map { "\($0)" } ?? "")".contains("model.attention_layers = 1 only applies with model.sequence_mixer: mamba2"))
        let mamba = try base.applying(["model.sequence_mixer=mamba2"])
        #expect(mamba.numericHash != base.numericHash)
        #expect(mamba.numericDifferences(from: base) == ["model.sequence_mixer: attention → mamba2"])
        #expect(try mamba.applying(["model.ssm_chunk_size=8"]).numericHash == mamba.numericHash, "every chunk computes the same scan")
        #expect(try mamba.applying(["model.attention_layers=0"]).numericHash != mamba.numericHash)
    }

    @Test func badValuesAreNamed() throws {
        func message(_ overrides: [String]) -> String {
            do { _ = try RunConfig(file: nil, overrides: overrides); return "no error" } catch { return "\(error)" }
        }
        // Kinds registered by other suites (MovingAverageMixerTests) follow the built-in ones.
        #expect(message(["model.sequence_mixer=mamba"]).hasPrefix("--set: model.sequence_mixer = mamba must be one of attention, mamba2"))
        #expect(message(["model.layers=2", "model.attention_layers=2"])
                == "--set: model.attention_layers = 2 must be layer indices from 0, comma-separated (e.g. 0,2), each below model.layers, or empty")
        #expect(message(["model.ssm_chunk_size=0"]) == "--set: model.ssm_chunk_size = 0 must be at least 1")
    }

    @Test func theMambaModelBuildsFromTheKeys() throws {
        let config = try RunConfig(file: nil, overrides: ["model.layers=2", "model.d_model=16", "model.heads=2", "model.kv_heads=2",
                                                          "model.ffn_hidden=24", "model.vocab_size=32", "data.seq_len=12",
                                                          "model.sequence_mixer=mamba2", "model.ssm_chunk_size=5"])
        let model = try TransformerLM(config: config.modelConfig, seed: 1)
        #expect(model.blocks.allSatisfy { $0.mamba2Mixer != nil })
        var rng = RNG(seed: 2)
        let tokens = (0..<24).map { _ in Int32(rng.nextInt(below: 32)) }
        let loss = try model.lossSum(tokens: tokens, targets: tokens, batch: 2, length: 12) / 24
        #expect(loss.isFinite && abs(loss - log(32)) < 0.5, "a fresh model predicts about uniformly: \(loss)")
    }

    @Test func theStudentsRunConfigDescribesTheStudent() throws {
        let teacher = try RunConfig(file: nil, overrides: ["model.layers=3", "model.d_model=16", "model.heads=2", "model.kv_heads=1",
                                                           "model.ffn_hidden=24", "model.vocab_size=32", "data.seq_len=16"])
        var settings = teacher.distill
        settings.keepAttention = "2"; settings.chunkSize = 4
        let student = try StudentBuilder.studentRunConfig(teacher: teacher, settings: settings)
        let built = try StudentBuilder.studentConfig(teacher: teacher.modelConfig, keepAttention: DistillLayerList("2")!, chunkSize: 4)
        #expect(student.modelConfig == built)
        #expect(student.model.sequenceMixer == "mamba2" && student.model.attentionLayers == "2" && student.model.ssmChunkSize == 4)
        // A student is not a teacher.
        #expect(throws: DistillError.teacherLayerNotAttention(layer: 0)) {
            try StudentBuilder.studentRunConfig(teacher: student, settings: teacher.distill)
        }
    }
}
