import Foundation
import Testing
import Checkpointing
import Collectives
import Models
import Training
import TrainingConfig
import _TestSupport

/// Whole MoE training runs: expert-parallel layouts give one rank's numbers step by step
/// (losses, gradient norms, final parameters), checkpoints hold every expert and resume
/// exactly, and layouts that cannot hold the experts are refused before anything computes.
@Suite struct ExpertParallelTrainingTests {
    static func moeOverrides(data: String, run: String, steps: Int, expert: Int = 1, experts: Int = 4) -> [String] {
        tinyOverrides(data: data, run: run, steps: steps) + [
            "moe.experts=\(experts)", "moe.top_k=2", "moe.expert_hidden=12", "moe.aux_loss=0.05", "moe.z_loss=0.01",
            "parallel.expert=\(expert)"]
    }

    static func train(ranks: Int, expert: Int, experts: Int, extra: [String] = [], data: String, run: String, steps: Int) throws -> [RankRun] {
        let config = try RunConfig(file: nil, overrides: moeOverrides(data: data, run: run, steps: steps, expert: expert, experts: experts) + extra)
        return try trainInProcess(config, ranks: ranks, steps: steps, saveCheckpoint: true)
    }

    @Test(arguments: [(2, 2, 4), (4, 4, 4), (3, 3, 6), (4, 2, 4)])
    func expertParallelTrainingMatchesOneRankStepByStep(ranks: Int, expert: Int, experts: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let steps = 10
        let single = try Self.train(ranks: 1, expert: 1, experts: experts, data: data, run: directory.file("one"), steps: steps)[0]
        let parallel = try Self.train(ranks: ranks, expert: expert, experts: experts, data: data, run: directory.file("many"), steps: steps)
        #expect(single.losses.last! < single.losses.first! - 0.3, "the MoE model should learn: \(single.losses)")
        var held = Set<String>()
        for (rank, seen) in parallel.enumerated() {
            #expect(seen.losses == parallel[0].losses && seen.gradientNorms == parallel[0].gradientNorms, "rank \(rank) reports what rank 0 reports")
            #expect(maxRelativeError(seen.losses, single.losses) < 1e-5, "losses \(seen.losses) vs one rank's \(single.losses)")
            #expect(maxRelativeError(seen.gradientNorms, single.gradientNorms) < 1e-5, "gradient norms \(seen.gradientNorms) vs \(single.gradientNorms)")
            for (name, values) in seen.namedParameters {
                held.insert(name)
                #expect(maxRelativeError(values, single.namedParameters[name]!) < 1e-5, "rank \(rank): \(name) after \(steps) steps")
            }
        }
        #expect(held == Set(single.namedParameters.keys))
        // Rank 0's checkpoint holds every expert, equal to the one-rank run's.
        let written = try CheckpointStore.read(#require(parallel[0].checkpoint))
        let reference = try CheckpointStore.read(#require(single.checkpoint))
        #expect(written.model.names.sorted() == reference.model.names.sorted())
        #expect(written.optimizer.names.sorted() == reference.optimizer.names.sorted())
        for name in reference.model.names {
            #expect(maxRelativeError(written.model[name]!.scalars, reference.model[name]!.scalars) < 1e-5, "checkpoint tensor \(name)")
        }
        for name in reference.optimizer.names where name.contains(".experts.\(experts - 1).") {
            #expect(maxRelativeError(written.optimizer[name]!.scalars, reference.optimizer[name]!.scalars) < 1e-5, "checkpoint moment \(name)")
        }
        #expect(written.shards["model.layers.1.block_sparse_moe.experts.\(experts - 1).w2.weight"]?.axis == "expert")
        #expect(written.state.expertParallel == expert)
        #expect(written.huggingFaceConfig["architectures"] as? [String] == ["MixtralForCausalLM"])
        #expect(written.huggingFaceConfig["num_local_experts"] as? Int == experts)
    }

    /// Stopping an expert-parallel run and resuming it gives bitwise the uninterrupted run's
    /// losses; resuming its checkpoint on one rank gives them within Float32 tolerance.
    @Test(arguments: [(2, 2), (4, 2)])
    func expertParallelRunsResumeExactly(ranks: Int, expert: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        func config(_ run: String) throws -> RunConfig {
            try RunConfig(file: nil, overrides: Self.moeOverrides(data: data, run: directory.file(run), steps: 10, expert: expert))
        }
        let (straight, interrupted) = (try config("straight"), try config("interrupted"))
        let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 60) { comm -> ([Double], [Double], [Double]) in
            let reference = try Trainer(config: straight, world: comm).run(resume: false).losses
            let first = try Trainer(config: interrupted, world: comm).run(resume: false, stopAt: 4).losses
            let second = try Trainer(config: interrupted, world: comm).run(resume: true).losses
            return (reference, first, second)
        }
        for result in results {
            let (reference, first, second) = try result.get()
            #expect(first.count == 4 && second.count == 6)
            #expect(first + second == reference)
        }
        // The same checkpoint (step 4, written by `ranks` ranks) resumed on one rank.
        let moved = try config("moved")
        try FileManager.default.createDirectory(atPath: directory.file("moved/checkpoints"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: directory.file("interrupted/checkpoints/step-00000004"),
                                         toPath: directory.file("moved/checkpoints/step-00000004"))
        let single = try Trainer(config: moved.applying(["parallel.expert=1"]), world: SingleProcessCommunicator()).run(resume: true).losses
        let reference = try results[0].get().0
        #expect(maxRelativeError(single, Array(reference.dropFirst(4))) < 1e-5, "one rank resumed from a 2-shard checkpoint: \(single) vs \(reference)")
    }

    @Test func layoutsThatCannotHoldTheExpertsAreRefusedNamingBothNumbers() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: Self.moeOverrides(data: data, run: directory.file("run"), steps: 2, expert: 4, experts: 6))
        let results = InProcessCommunicator.run(size: 4) { comm in try Trainer(config: config, world: comm) }
        for result in results {
            #expect(throws: TrainingError.expertsDoNotDivide(source: "--set", experts: 6, expert: 4)) { try result.get() }
        }
        #expect(TrainingError.expertsDoNotDivide(source: "x.yaml", experts: 6, expert: 4).description
            == "x.yaml: moe.experts = 6 is not divisible by parallel.expert = 4; choose parallel.expert dividing moe.experts")
        let dense = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("dense"), steps: 2) + ["parallel.expert=2"])
        for result in InProcessCommunicator.run(size: 2, { comm in try Trainer(config: dense, world: comm) }) {
            #expect(throws: TrainingError.expertParallelismWithoutExperts(source: "--set", expert: 2)) { try result.get() }
        }
    }
}
