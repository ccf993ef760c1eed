import Testing
import Checkpointing
import Collectives
import Foundation
import Models
import TensorCore
import Training
import TrainingConfig
import _TestSupport

@Suite struct SoupTests {
    /// A base run of 6 steps and `seeds.count` fine-tunes of it (4 steps each, their own seed,
    /// hence data order), as `tessera train --init-from` makes them. Returns the fine-tunes' checkpoints.
    static func fineTunes(in directory: TemporaryDirectory, data: String, seeds: [Int], extra: [String] = []) throws -> (base: URL, tuned: [URL]) {
        let base = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("base"), steps: 6) + extra)
        _ = try Trainer(config: base, world: SingleProcessCommunicator()).run(resume: false)
        let baseCheckpoint = CheckpointStore(root: directory.url.appendingPathComponent("base/checkpoints")).latest()!
        var tuned: [URL] = []
        for seed in seeds {
            let run = directory.file("tune-\(seed)")
            let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: run, steps: 4)
                                       + extra + ["train.seed=\(seed)", "train.lr=1e-3", "train.warmup_steps=1"])
            let trainer = try Trainer(config: config, world: SingleProcessCommunicator())
            try trainer.initializeParameters(from: baseCheckpoint)
            _ = try trainer.run(resume: false)
            tuned.append(CheckpointStore(root: URL(fileURLWithPath: run).appendingPathComponent("checkpoints")).latest()!)
        }
        return (baseCheckpoint, tuned)
    }

    /// A checkpoint's validation loss as `tessera eval` computes it (a model of its saved
    /// config, its parameters loaded, the first `batches` validation batches), independent of
    /// the soup's own validator.
    static func evaluate(_ checkpoint: URL, data: String, batches: Int) throws -> Double {
        let contents = try CheckpointStore.read(checkpoint)
        let config = try RunConfig(resolvedYAML: contents.runConfig, source: checkpoint.path)
        let comm = SingleProcessCommunicator()
        let model = try TransformerLM(config: config.modelConfig, seed: 0, grid: try ProcessGrid(world: comm, data: 1))
        try model.parameters.load(contents.model, source: checkpoint.path)
        let tokens = try TrainingData(directory: data, length: config.data.seqLen, globalBatch: config.train.globalBatch,
                                      seed: config.train.seed, dataRank: 0, dataRanks: 1)
        return try Evaluator(model: model, data: tokens, comm: comm).validationLoss(batches: batches)
    }

    @Test func initFromStartsANewRunFromTheCheckpointsWeights() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let (base, _) = try Self.fineTunes(in: directory, data: data, seeds: [])
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("tune"), steps: 2) + ["train.seed=9"])
        let trainer = try Trainer(config: config, world: SingleProcessCommunicator())
        try trainer.initializeParameters(from: base)
        #expect(trainer.model.parameters.stateDict() == (try CheckpointStore.read(base)).model)
        #expect(trainer.step == 0)
    }

    /// Greedy's validation loss is never worse than its best ingredient's; the soup it writes is
    /// an ordinary checkpoint: it evaluates to the loss reported, and `train --resume` starts
    /// from its parameters and trains on.
    @Test func greedySoupIsNoWorseThanItsBestIngredientAndLoadsForEvalAndResume() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let (_, tuned) = try Self.fineTunes(in: directory, data: data, seeds: [11, 12, 13])
        let output = directory.url.appendingPathComponent("soup")
        var lines: [String] = []
        let report = try SoupJob(method: .greedy, inputs: tuned, validationData: data, validationBatches: 3, output: output).run { lines.append($0) }
        // The ingredients' losses and the written soup's, measured as `tessera eval` does.
        let measured = try tuned.map { try Self.evaluate($0, data: data, batches: 3) }
        let best = measured.min()!
        let soupLoss = try #require(report.soupLoss)
        #expect(report.ingredientLosses.map(\.checkpoint) == tuned)
        for (reported, loss) in zip(report.ingredientLosses.map(\.loss), measured) { #expect(abs(reported - loss) <= 1e-9 * loss, "\(reported) vs \(loss)") }
        #expect(report.kept.first == tuned[measured.firstIndex(of: best)!], "greedy starts from the best ingredient")
        #expect(lines.filter { $0.hasPrefix("kept") || $0.hasPrefix("left out") }.count == 2, "one decision per ingredient after the best")
        #expect(FileManager.default.fileExists(atPath: output.appendingPathComponent("soup.json").path))

        // eval: the written checkpoint gives the reported loss, no worse than the best ingredient's.
        let soup = try CheckpointStore.read(report.checkpoint)
        var config = try RunConfig(resolvedYAML: soup.runConfig, source: "soup")
        #expect(config.run.dir == output.path)
        let written = try Self.evaluate(report.checkpoint, data: data, batches: 3)
        #expect(abs(written - soupLoss) <= 1e-9 * soupLoss, "the soup written evaluates to \(written), the job reported \(soupLoss)")
        #expect(written <= best, "greedy soup \(written) is worse than its best ingredient \(best)")

        // resume: starts from the soup's parameters and step, and trains on.
        config.train.steps = soup.state.step + 2
        let resumed = try Trainer(config: config, world: SingleProcessCommunicator())
        #expect(try resumed.resumeFromLatest() == soup.state.step)
        #expect(resumed.model.parameters.stateDict() == soup.model)
        let run = try Trainer(config: config, world: SingleProcessCommunicator()).run(resume: true)
        #expect(run.losses.count == 2 && run.losses.allSatisfy(\.isFinite))
    }

    @Test func uniformSoupReportsEveryIngredientAndKeepsAll() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let (_, tuned) = try Self.fineTunes(in: directory, data: data, seeds: [21, 22])
        let report = try SoupJob(method: .uniform, inputs: tuned, validationData: data, validationBatches: 2,
                                 output: directory.url.appendingPathComponent("soup")).run()
        #expect(report.kept == tuned && report.weights == [0.5, 0.5])
        #expect(report.ingredientLosses.count == 2 && report.soupLoss?.isFinite == true)
        let a = try CheckpointStore.read(tuned[0]).model, b = try CheckpointStore.read(tuned[1]).model
        let soup = try CheckpointStore.read(report.checkpoint).model
        let name = "model.layers.0.self_attn.q_proj.weight"
        #expect(soup[name]!.scalars == zip(a[name]!.scalars, b[name]!.scalars).map { Float((Double($0) + Double($1)) / 2) })
    }

    @Test func checkpointsOfDifferentModelsAndAnExistingOutputAreRefused() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let (base, _) = try Self.fineTunes(in: directory, data: data, seeds: [])
        let other = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("other"), steps: 2) + ["model.rope_theta=500"])
        _ = try Trainer(config: other, world: SingleProcessCommunicator()).run(resume: false)
        let otherCheckpoint = CheckpointStore(root: directory.url.appendingPathComponent("other/checkpoints")).latest()!
        let output = directory.url.appendingPathComponent("soup")
        let error = #expect(throws: SoupError.self) { try SoupJob(method: .uniform, inputs: [base, otherCheckpoint], output: output).run() }
        #expect(error == .configMismatch(file: "config.json", key: "rope_theta", value: "10000", checkpoint: base.path,
                                         otherValue: "500", otherCheckpoint: otherCheckpoint.path))
        #expect(!FileManager.default.fileExists(atPath: output.path), "nothing written")

        let wider = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("wider"), steps: 2) + ["model.ffn_hidden=32"])
        _ = try Trainer(config: wider, world: SingleProcessCommunicator()).run(resume: false)
        let widerCheckpoint = CheckpointStore(root: directory.url.appendingPathComponent("wider/checkpoints")).latest()!
        let shape = #expect(throws: SoupError.self) { try SoupJob(method: .uniform, inputs: [base, widerCheckpoint], output: output).run() }
        #expect(shape == .shapeMismatch(name: "model.layers.0.mlp.gate_proj.weight", shape: [24, 16], checkpoint: base.path,
                                        otherShape: [32, 16], otherCheckpoint: widerCheckpoint.path))

        // The base's own run directory holds a checkpoint: never an output.
        let runDirectory = directory.url.appendingPathComponent("base")
        #expect(throws: SoupError.outputNotEmpty(path: runDirectory.path)) {
            try SoupJob(method: .uniform, inputs: [base], output: runDirectory).run()
        }
        #expect(throws: SoupError.weightsDoNotSumToOne(sum: 0.75)) {
            try SoupJob(method: .weighted, inputs: [base, base], weights: [0.5, 0.25], output: output).run()
        }
        #expect(throws: SoupError.negativeWeight(weight: -1, input: base.path)) {
            try SoupJob(method: .weighted, inputs: [base, base], weights: [-1, 2], output: output).run()
        }
    }
}
