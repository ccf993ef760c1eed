import Testing
import Collectives
import Training
import TrainingConfig
import _TestSupport

/// `train.micro_batch`: a step taken as several forward/backward passes whose gradients add up
/// gives the numbers of the same global batch taken in one pass (to Float32 rounding).
@Suite struct GradientAccumulationTests {
    static let steps = 8

    static func train(ranks: Int, microBatch: Int, data: String, run: String, extra: [String] = []) throws -> [RankRun] {
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: run, steps: steps, batch: 16)
                                   + ["train.micro_batch=\(microBatch)"] + extra)
        return try trainInProcess(config, ranks: ranks, steps: steps)
    }

    /// 4 micro-batches per rank (16 sequences: 4 of 4 on one rank, 4 of 2 on each of 2 ranks).
    @Test(arguments: [(1, 4), (2, 2)])
    func fourMicroBatchesEqualOnePass(ranks: Int, microBatch: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let whole = try Self.train(ranks: ranks, microBatch: 0, data: data, run: directory.file("whole"))
        let accumulated = try Self.train(ranks: ranks, microBatch: microBatch, data: data, run: directory.file("micro"))
        for (rank, seen) in accumulated.enumerated() {
            let one = whole[rank]
            #expect(seen.losses.count == Self.steps)
            #expect(seen.parameters == accumulated[0].parameters, "rank \(rank) differs from rank 0")
            #expect(maxRelativeError(seen.losses, one.losses) < 1e-6, "losses: \(seen.losses) vs \(one.losses)")
            #expect(maxRelativeError(seen.gradientNorms, one.gradientNorms) < 1e-6, "norms: \(seen.gradientNorms) vs \(one.gradientNorms)")
            #expect(maxRelativeError(seen.parameters, one.parameters) < 1e-6,
                    "parameters: \(DataParallelExactnessTests.worst(seen.parameters, one.parameters))")
            #expect(seen.parameters != one.parameters || microBatch == 16 / ranks, "the passes really were split (rounding differs)")
        }
    }

    /// A mixture-of-experts model: its balance loss is over the whole batch, which passes of
    /// part of it do not add up to (measured: norms 8e-4 off), so micro-batches are refused.
    @Test func mixtureOfExpertsRefusesMicroBatches() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), batch: 16)
            + ["moe.experts=4", "train.micro_batch=2"])
        var text = "(no error)"
        do { _ = try Trainer(config: config, world: SingleProcessCommunicator()) } catch { text = "\(error)" }
        #expect(text == "--set: train.micro_batch = 2 splits each rank's 16 sequences, which mixture-of-experts layers cannot do yet (their balance loss is over the whole batch); set train.micro_batch=0")
        let whole = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), batch: 16) + ["moe.experts=4", "train.micro_batch=16"])
        _ = try Trainer(config: whole, world: SingleProcessCommunicator())   // one pass: allowed
    }

    @Test func aMicroBatchThatDoesNotDivideNamesAllThreeNumbers() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), batch: 12) + ["train.micro_batch=5"])
        let results = InProcessCommunicator.run(size: 2) { comm in _ = try Trainer(config: config, world: comm) }
        for result in results {
            var text = "(no error)"
            do { try result.get() } catch { text = "\(error)" }
            #expect(text.contains("train.global_batch = 12") && text.contains("parallel.data = 2") && text.contains("train.micro_batch = 5"), "\(text)")
            #expect(text.hasPrefix("defaults with --set:"), "names where the numbers came from: \(text)")
        }
    }
}
