import Foundation
import Testing
import Models
import TrainingConfig
import _TestSupport

/// The `moe` section and `parallel.expert`: values, layer selection, ranges and messages.
@Suite struct MoEConfigTests {
    @Test func everySecondLayerFromANestedMappingOrAnOverride() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = directory.file("moe.yaml")
        try "model:\n  layers: 4\nmoe:\n  experts: 4\n  top_k: 1\n  capacity_factor: 1.5\n  layers:\n    every: 2\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try RunConfig(file: file)
        #expect(config.moe.layers == "every 2")
        #expect(config.modelConfig.moeLayers == [1, 3])
        #expect(config.modelConfig.moe == MoESpec(experts: 4, topK: 1, expertHidden: 384, capacityFactor: 1.5,
                                                  auxLossCoefficient: 0.01, zLossCoefficient: 0.001))
        for overrides in [["moe.layers.every=2"], ["moe.layers=every 2"], ["moe.layers=Every: 2"]] {
            let set = try RunConfig(file: nil, overrides: ["moe.experts=2"] + overrides)
            #expect(set.modelConfig.moeLayers == [1, 3], "\(overrides)")
        }
        let all = try RunConfig(file: nil, overrides: ["moe.experts=2", "moe.layers=all"])
        #expect(all.modelConfig.moeLayers == [0, 1, 2, 3])
        #expect(all.modelConfig.moe?.capacityFactor == nil, "capacity_factor 0 is dropless")
        #expect(try RunConfig(file: nil).modelConfig.moeLayers.isEmpty, "moe.experts = 0 keeps every layer dense")
        #expect(try RunConfig(resolvedYAML: config.yaml, source: "run.yaml").modelConfig == config.modelConfig, "run.yaml round-trips")
    }

    @Test func badValuesAreNamedWithWhatToChange() throws {
        func message(_ overrides: [String]) -> String {
            do { _ = try RunConfig(file: nil, overrides: overrides); return "no error" } catch { return "\(error)" }
        }
        #expect(message(["moe.experts=4", "moe.layers=some"]) == "--set: moe.layers = some must be all, or every N with N ≥ 1 (e.g. every 2: layers 2, 4, ... counting from 1)")
        #expect(message(["moe.layers.every=0"]).contains("moe.layers = every 0 must be all, or every N with N ≥ 1"))
        #expect(message(["moe.experts=4", "moe.top_k=3"]).contains("moe.top_k = 3 must be 1 or 2"))
        #expect(message(["moe.experts=1", "moe.top_k=2"]).contains("moe.top_k = 2 must not exceed moe.experts = 1"))
        #expect(message(["moe.capacity_factor=-1"]) == "--set: moe.capacity_factor = -1.0 must not be negative")
        #expect(message(["parallel.expert=0"]) == "--set: parallel.expert = 0 must be at least 1")
        #expect(message(["moe.expert_hiden=3"]).contains("did you mean 'moe.expert_hidden'"))
    }

    @Test func denseConfigsKeepTheirHashAndMoEKeysCountOnlyWithExperts() throws {
        let dense = try RunConfig(file: nil)
        #expect(dense.matchesNumericHash("78a82af90da7ff11"), "its checkpoints from before MoE still resume")
        #expect(try dense.applying(["moe.top_k=1"]).numericHash == dense.numericHash)
        let moe = try dense.applying(["moe.experts=4"])
        #expect(moe.numericHash != dense.numericHash)
        #expect(try moe.applying(["moe.top_k=1"]).numericHash != moe.numericHash)
        #expect(moe.numericDifferences(from: dense) == ["moe.experts: 0 → 4"])
        #expect(try moe.applying(["parallel.expert=2"]).numericHash == moe.numericHash, "the layout does not change the numbers")
    }
}
