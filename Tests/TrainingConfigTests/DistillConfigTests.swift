import Foundation
import Testing
import TrainingConfig
import _TestSupport

/// The `distill` section: defaults, parsing (file and --set), the layer list, bad values named.
@Suite struct DistillConfigTests {
    @Test func defaultsAreDocumentedAndOutsideTheNumericHash() throws {
        let config = try RunConfig(file: nil)
        #expect(config.distill == DistillSection())
        #expect(config.distill.keepAttention == "" && config.distill.chunkSize == 64)
        #expect(config.distill.temperature == 1.0 && config.distill.dataLossWeight == 0)
        #expect(RunConfig.helpText.contains("  distill.keep_attention ") && RunConfig.helpText.contains("  distill.stage3_lr ")
                && RunConfig.helpText.contains("  distill.stage3_train "))
        let changed = try config.applying(["distill.stage1_steps=7", "distill.keep_attention=1", "distill.temperature=2"])
        #expect(changed.numericHash == config.numericHash, "distillation keys do not change a training run's numbers")
        #expect(changed.numericDifferences(from: config).isEmpty)
    }

    @Test func fileAndOverridesSetEveryKeyAndRunYAMLRoundTrips() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = directory.file("distill.yaml")
        try """
        model:
          layers: 3
        distill:
          keep_attention: 2, 0
          chunk_size: 16
          stage1_steps: 10
          stage1_lr: 0.01
          stage2_steps: 20
          stage2_lr: 0.002
          stage3_steps: 0
          stage3_lr: 1e-4
          temperature: 2.5
          data_loss_weight: 0.5
          stage3_train: mixers

        """.write(toFile: file, atomically: true, encoding: .utf8)
        let config = try RunConfig(file: file)
        var expected = DistillSection()
        expected.keepAttention = "0,2"   // canonical: sorted, no spaces
        expected.chunkSize = 16
        expected.stage1Steps = 10; expected.stage1Lr = 0.01
        expected.stage2Steps = 20; expected.stage2Lr = 0.002
        expected.stage3Steps = 0; expected.stage3Lr = 1e-4
        expected.temperature = 2.5; expected.dataLossWeight = 0.5
        expected.stage3Train = "mixers"
        #expect(config.distill.stage3TrainSet == .mixers && DistillSection().stage3TrainSet == .all)
        #expect(config.distill == expected)
        #expect(try RunConfig(resolvedYAML: config.yaml, source: "run.yaml").distill == expected)
        let none = try config.applying(["distill.keep_attention="])
        #expect(none.distill.keepAttention == "" && DistillLayerList(none.distill.keepAttention)?.layers == [])
        #expect(try RunConfig(resolvedYAML: none.yaml, source: "run.yaml").distill.keepAttention == "")
        #expect(try config.applying(["distill.keep_attention=1"]).distill.keepAttention == "1")
    }

    @Test func badValuesAreNamed() throws {
        func message(_ overrides: [String]) -> String {
            do { _ = try RunConfig(file: nil, overrides: overrides); return "no error" } catch { return "\(error)" }
        }
        let rule = "must be layer indices from 0, comma-separated (e.g. 0,2), each below model.layers, or empty"
        #expect(message(["distill.keep_attention=1,x"]) == "--set: distill.keep_attention = 1,x \(rule)")
        #expect(message(["distill.keep_attention=-1"]) == "--set: distill.keep_attention = -1 \(rule)")
        #expect(message(["model.layers=2", "distill.keep_attention=2"]) == "--set: distill.keep_attention = 2 \(rule)")
        #expect(message(["distill.chunk_size=0"]) == "--set: distill.chunk_size = 0 must be at least 1")
        #expect(message(["distill.stage2_steps=-3"]) == "--set: distill.stage2_steps = -3 must not be negative")
        #expect(message(["distill.stage1_lr=0"]) == "--set: distill.stage1_lr = 0.0 must be positive")
        #expect(message(["distill.temperature=abc"]) == "--set: distill.temperature = 'abc' is not a finite number")
        #expect(message(["distill.temprature=2"]).contains("did you mean 'distill.temperature'"))
        #expect(message(["distill.stage3_train=mlp"]) == "--set: distill.stage3_train = mlp must be one of all, mixers")
    }

    @Test func layerListParsing() {
        #expect(DistillLayerList("")?.layers == [])
        #expect(DistillLayerList(" 3 ,1,3")?.layers == [1, 3])
        #expect(DistillLayerList("1,,2") == nil)
        #expect(DistillLayerList("all") == nil)
        #expect(DistillLayerList(layers: [2, 0, 2]).description == "0,2")
    }
}
