import Testing
import Collectives
import Models
import Training
import TrainingConfig
import _TestSupport

/// `train.micro_batch`: a step taken as several forward/backward passes whose gradients add up
/// gives the numbers of the same global batch taken in one pass (to Float32 rounding); on a
/// mixture of experts the auxiliary losses are per pass and averaged over the passes.
@Suite struct GradientAccumulationTests {
    static let steps = 8
    /// The tiny model's mixture of experts, with balance coefficient `aux` (no capacity limit).
    static func experts(aux: Double) -> [String] {
        ["moe.experts=4", "moe.top_k=2", "moe.expert_hidden=12", "moe.aux_loss=\(aux)", "moe.z_loss=0.01"]
    }

    /// ‖a − b‖ / ‖b‖ (gradients are small: an absolute floor of 1 would hide differences).
    static func distance(_ a: [Float], _ b: [Float]) -> Double {
        let d = zip(a, b).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
        return (d / b.reduce(0.0) { $0 + Double($1) * Double($1) }).squareRoot()
    }

    static func train(ranks: Int, microBatch: Int, data: String, run: String, extra: [String] = []) throws -> [RankRun] {
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: run, steps: steps, batch: 16)
                                   + ["train.micro_batch=\(microBatch)"] + extra)
        return try trainInProcess(config, ranks: ranks, steps: steps)
    }

    /// 4 micro-batches per rank (16 sequences: 4 of 4 on one rank, 4 of 2 on each of 2 ranks),
    /// dense and a mixture of experts with balance coefficient 0 (its z-loss, a mean over
    /// tokens, adds up over passes like the cross-entropy).
    @Test(arguments: [(1, 4, false), (2, 2, false), (1, 4, true), (2, 2, true)])
    func fourMicroBatchesEqualOnePass(ranks: Int, microBatch: Int, moe: Bool) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let extra = moe ? Self.experts(aux: 0) : []
        let whole = try Self.train(ranks: ranks, microBatch: 0, data: data, run: directory.file("whole"), extra: extra)
        let accumulated = try Self.train(ranks: ranks, microBatch: microBatch, data: data, run: directory.file("micro"), extra: extra)
        for (rank, seen) in accumulated.enumerated() {
            let one = whole[rank]
            #expect(seen.losses.count == Self.steps)
            #expect(seen.parameters == accumulated[0].parameters, "rank \(rank) differs from rank 0")
            #expect(maxRelativeError(seen.losses, one.losses) < 1e-6, "losses: \(seen.losses) vs \(one.losses)")
            #expect(maxRelativeError(seen.gradientNorms, one.gradientNorms) < 1e-6, "norms: \(seen.gradientNorms) vs \(one.gradientNorms)")
            #expect(maxRelativeError(seen.parameters, one.parameters) < 1e-6,
                    "parameters: \(DataParallelExactnessTests.worst(seen.parameters, one.parameters))")
            #expect(seen.parameters != one.parameters, "the passes really were split (rounding differs)")
        }
    }

    /// Balance coefficient > 0: one step of 4 micro-batches of 4 gives the mean of 4 separate
    /// single passes, each over its own 4 sequences with its own mean objective (cross-entropy
    /// mean + aux · balance + z · z-loss of those sequences): gradient, loss and logged
    /// auxiliary losses. One pass of all 16 differs (its balance is over the 16).
    @Test func balanceLossIsTheMeanOverMicroBatches() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        func config(_ micro: Int) throws -> RunConfig {
            try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run\(micro)"), batch: 16)
                          + Self.experts(aux: 0.05) + ["train.micro_batch=\(micro)"])
        }
        let trainer = try Trainer(config: config(4), world: SingleProcessCommunicator())
        let loss = try trainer.trainStep()
        let accumulated = trainer.model.parameters.gradients.array

        let reference = try TransformerLM(config: config(4).modelConfig, seed: UInt64(trainer.config.train.seed))
        let batch = trainer.data.trainBatch(samplesSeen: 0)
        let span = 4 * trainer.data.localLength
        var gradient = [Double](repeating: 0, count: accumulated.count), passLoss = 0.0, auxiliary = [String: Double]()
        for pass in 0..<4 {
            let rows = (pass * span)..<((pass + 1) * span)
            reference.parameters.zeroGradients()
            passLoss += try reference.lossAndGradients(tokens: Array(batch.tokens[rows]), targets: Array(batch.targets[rows]), batch: 4,
                                                       length: trainer.data.localLength, gradientScale: 1 / Float(span)) / Double(span) / 4
            for (i, g) in reference.parameters.gradients.array.enumerated() { gradient[i] += Double(g) / 4 }
            for (name, value) in reference.auxiliaryLosses { auxiliary[name, default: 0] += value / 4 }
        }
        let expected = gradient.map { Float($0) }
        #expect(Self.distance(accumulated, expected) < 1e-6, "gradients: \(Self.distance(accumulated, expected)) relative (L2)")
        #expect(abs(loss - passLoss) <= 1e-6 * abs(passLoss), "loss \(loss) vs \(passLoss)")
        let logged = trainer.auxiliaries.totals
        #expect(Set(logged.keys) == ["moe_aux", "moe_z"])
        for (name, value) in auxiliary { #expect(abs(logged[name]! - value) <= 1e-9 * abs(value), "\(name): \(logged[name]!) vs \(value)") }
        #expect(trainer.auxiliaries.routing.values.allSatisfy { $0.tokens == 16 * trainer.data.localLength })

        let onePass = try Trainer(config: config(0), world: SingleProcessCommunicator())
        _ = try onePass.trainStep()
        let whole = onePass.model.parameters.gradients.array
        #expect(Self.distance(whole, expected) > 1e-4, "one pass's whole-batch balance should differ: \(Self.distance(whole, expected))")
    }

    /// Expert parallel with micro-batches: 4 ranks (data 4 = 2 expert groups × 2 shards, 2 passes
    /// of 2) and 2 ranks (data 2 = one group of 2 shards, 4 passes of 2) equal one rank taking
    /// the same passes (4 × 2 and 2 × 2 sequences each), balance coefficient > 0.
    @Test(arguments: [4, 2])
    func expertParallelMicroBatchesEqualOneRank(ranks: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let moe = Self.experts(aux: 0.05)
        let single = try Self.train(ranks: 1, microBatch: 2 * ranks, data: data, run: directory.file("one"), extra: moe)[0]
        let parallel = try Self.train(ranks: ranks, microBatch: 2, data: data, run: directory.file("ep"),
                                      extra: moe + ["parallel.data=\(ranks)", "parallel.expert=2"])
        for (rank, run) in parallel.enumerated() {
            #expect(run.losses == parallel[0].losses && run.gradientNorms == parallel[0].gradientNorms, "rank \(rank)")
            for (name, values) in run.namedParameters {
                if let other = parallel[0].namedParameters[name] { #expect(values == other, "rank \(rank)'s \(name) differs from rank 0's") }
                let reference = single.namedParameters[name] ?? []
                #expect(reference.count == values.count && maxRelativeError(values, reference) < 1e-5,
                        "rank \(rank) \(name): \(DataParallelExactnessTests.worst(values, reference))")
            }
            #expect(maxRelativeError(run.losses, single.losses) < 1e-5, "losses \(run.losses) vs \(single.losses)")
            #expect(maxRelativeError(run.gradientNorms, single.gradientNorms) < 1e-5, "norms \(run.gradientNorms) vs \(single.gradientNorms)")
        }
    }

    @Test func aMicroBatchThatDoesNotDivideNamesAllThreeNumbers() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        for extra in [[], Self.experts(aux: 0.05)] {
            let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), batch: 12)
                                       + ["train.micro_batch=5"] + extra)
            let results = InProcessCommunicator.run(size: 2) { comm in _ = try Trainer(config: config, world: comm) }
            for result in results {
                var text = "(no error)"
                do { try result.get() } catch { text = "\(error)" }
                #expect(text.contains("train.global_batch = 12") && text.contains("parallel.data = 2") && text.contains("train.micro_batch = 5"), "\(text)")
                #expect(text.hasPrefix("defaults with --set:"), "names where the numbers came from: \(text)")
                #expect(!text.contains("\n"), "one line: \(text)")
            }
        }
    }
}
