import Testing
import Collectives
import Training
import _TestSupport

/// Sequence parallelism keeps the main correctness property: data × sequence layouts (ring and
/// Ulysses) give one rank's losses, gradient norms and final parameters, step by step.
@Suite struct SequenceParallelExactnessTests {
    static let steps = 12

    /// seq_len 24 splits into 2 × 2 and 2 × 3 chunks; kv_heads 2 splits over 2 Ulysses ranks.
    static func overrides(data: String, run: String) -> [String] {
        tinyOverrides(data: data, run: run, steps: steps) + ["data.seq_len=24", "model.kv_heads=2"]
    }

    static func train(data dataRanks: Int, sequence: Int, mode: String, corpus: String, run: String, extra: [String] = []) throws -> [RankRun] {
        let config = try RunConfig(file: nil, overrides: overrides(data: corpus, run: run) + extra
            + ["parallel.data=\(dataRanks)", "parallel.sequence=\(sequence)", "parallel.sequence_mode=\(mode)"])
        return try trainInProcess(config, ranks: dataRanks * sequence, steps: steps)
    }

    @Test(arguments: [(1, 2, "ring"), (2, 2, "ring"), (1, 3, "ring"), (1, 2, "ulysses"), (2, 2, "ulysses")])
    func layoutMatchesOneRank(data: Int, sequence: Int, mode: String) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let corpus = try makeCorpus(in: directory)
        let single = try Self.train(data: 1, sequence: 1, mode: "ring", corpus: corpus, run: directory.file("run1"))[0]
        let parallel = try Self.train(data: data, sequence: sequence, mode: mode, corpus: corpus, run: directory.file("runN"))
        Self.expectMatch(parallel, single, layout: "\(data) × \(sequence) \(mode)")
    }

    /// A hybrid model (layer 0 Mamba-2, whose mixer gathers the sharded sequence; layer 1
    /// attention) gives one rank's numbers too.
    @Test(arguments: [(1, 3, "ring"), (2, 2, "ulysses")])
    func aMambaHybridMatchesOneRank(data: Int, sequence: Int, mode: String) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let corpus = try makeCorpus(in: directory)
        let hybrid = ["model.sequence_mixer=mamba2", "model.attention_layers=1", "model.ssm_chunk_size=4"]
        let single = try Self.train(data: 1, sequence: 1, mode: "ring", corpus: corpus, run: directory.file("run1"), extra: hybrid)[0]
        let parallel = try Self.train(data: data, sequence: sequence, mode: mode, corpus: corpus, run: directory.file("runN"), extra: hybrid)
        Self.expectMatch(parallel, single, layout: "hybrid \(data) × \(sequence) \(mode)")
    }

    /// Every rank reports rank 0's losses and holds its parameters; losses, gradient norms and
    /// parameters within 1e-5 of one rank's, which learned.
    static func expectMatch(_ parallel: [RankRun], _ single: RankRun, layout: String) {
        #expect(single.losses.last! < single.losses.first! - 0.3, "the tiny model should learn: \(single.losses)")
        for (rank, seen) in parallel.enumerated() {
            #expect(seen.losses == parallel[0].losses, "\(layout): rank \(rank) reports the losses rank 0 reports")
            #expect(seen.parameters == parallel[0].parameters, "\(layout): rank \(rank)'s parameters differ from rank 0's")
            #expect(maxRelativeError(seen.losses, single.losses) < 1e-5, "\(layout) losses: \(seen.losses) vs \(single.losses)")
            #expect(maxRelativeError(seen.gradientNorms, single.gradientNorms) < 1e-5,
                    "\(layout) gradient norms: \(seen.gradientNorms) vs \(single.gradientNorms)")
            #expect(maxRelativeError(seen.parameters, single.parameters) < 1e-5,
                    "\(layout) rank \(rank)'s parameters: \(DataParallelExactnessTests.worst(seen.parameters, single.parameters))")
        }
    }

    /// The validation loss is the same whatever the layout, too.
    @Test func validationLossMatchesOneRank() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let corpus = try makeCorpus(in: directory)
        func loss(_ sequence: Int) throws -> [Double] {
            let config = try RunConfig(file: nil, overrides: Self.overrides(data: corpus, run: directory.file("run\(sequence)"))
                + ["parallel.sequence=\(sequence)"])
            return try InProcessCommunicator.run(size: sequence) { comm in try Trainer(config: config, world: comm).validationLoss() }
                .map { try $0.get() }
        }
        let one = try loss(1)[0]
        for value in try loss(3) { #expect(abs(value - one) / one < 1e-5, "validation loss \(value) vs \(one)") }
    }

    /// Stopping a 2 × 2 ring run (and a 1 × 2 Ulysses one) at step 5 and resuming gives bitwise
    /// the losses of the uninterrupted run.
    @Test(arguments: [(2, "ring"), (1, "ulysses")])
    func resumedSequenceParallelRunMatchesUninterruptedRun(data dataRanks: Int, mode: String) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let corpus = try makeCorpus(in: directory)
        let layout = ["parallel.data=\(dataRanks)", "parallel.sequence=2", "parallel.sequence_mode=\(mode)"]
        let straight = try RunConfig(file: nil, overrides: Self.overrides(data: corpus, run: directory.file("straight")) + layout)
        let interrupted = try RunConfig(file: nil, overrides: Self.overrides(data: corpus, run: directory.file("interrupted")) + layout)
        let results = InProcessCommunicator.run(size: dataRanks * 2, timeoutSeconds: 60) { comm -> ([Double], [Double], [Double]) in
            let reference = try Trainer(config: straight, world: comm).run(resume: false).losses
            let first = try Trainer(config: interrupted, world: comm).run(resume: false, stopAt: 5).losses
            let second = try Trainer(config: interrupted, world: comm).run(resume: true).losses
            return (reference, first, second)
        }
        for result in results {
            let (reference, first, second) = try result.get()
            #expect(first.count == 5 && second.count == Self.steps - 5)
            #expect(first + second == reference, "\(dataRanks) × 2 \(mode): \(first + second) vs \(reference)")
        }
    }

    /// Each sequence rank's tokens and targets are its data rank's samples at its zigzag positions.
    @Test func sequenceRanksTakeTheirPositionsOfTheSameSamples() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let corpus = try makeCorpus(in: directory)
        let whole = try TrainingData(directory: corpus, length: 24, globalBatch: 4, seed: 3, dataRank: 1, dataRanks: 2)
        let full = whole.trainBatch(samplesSeen: 8)
        for rank in 0..<3 {
            let data = try TrainingData(directory: corpus, length: 24, globalBatch: 4, seed: 3, dataRank: 1, dataRanks: 2,
                                        sequenceRank: rank, sequenceRanks: 3)
            // 6 chunks of 4 tokens: rank r holds chunks r and 5 − r.
            #expect(data.positions == Array((4 * rank)..<(4 * rank + 4)) + Array((20 - 4 * rank)..<(24 - 4 * rank)))
            #expect(data.localLength == 8)
            let mine = data.trainBatch(samplesSeen: 8)
            let expected = (0..<2).flatMap { s in data.positions.map { full.tokens[s * 24 + $0] } }
            let expectedTargets = (0..<2).flatMap { s in data.positions.map { full.targets[s * 24 + $0] } }
            #expect(mine.tokens == expected && mine.targets == expectedTargets, "sequence rank \(rank)")
        }
    }

    /// Errors raised before any rank computes: the first thing every rank's Trainer throws.
    static func refusal(_ overrides: [String], ranks: Int) throws -> [String] {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let corpus = try makeCorpus(in: directory, bytes: 5_000)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: corpus, run: directory.file("run")) + overrides)
        return InProcessCommunicator.run(size: ranks) { comm -> String in
            do { _ = try Trainer(config: config, world: comm); return "no error" } catch { return "\(error)" }
        }.map { (try? $0.get()) ?? "communicator failed" }
    }

    @Test func lengthThatDoesNotSplitIsRefused() throws {
        for message in try Self.refusal(["data.seq_len=16", "parallel.sequence=3"], ranks: 3) {
            #expect(message.contains("data.seq_len = 16 does not split into 2 × parallel.sequence = 6 equal chunks; choose a multiple of 6"),
                    "\(message)")
        }
    }

    @Test func headsThatDoNotSplitAreRefused() throws {
        for message in try Self.refusal(["model.kv_heads=1", "parallel.sequence=2", "parallel.sequence_mode=ulysses"], ranks: 2) {
            #expect(message.contains("model.heads = 2 and model.kv_heads = 1 are not both multiples of 2"), "\(message)")
        }
    }

    @Test func unknownModeIsRefused() throws {
        do {
            _ = try RunConfig(file: nil, overrides: ["parallel.sequence_mode=zigzag"])
            Issue.record("parallel.sequence_mode=zigzag was accepted")
        } catch {
            #expect("\(error)".contains("parallel.sequence_mode") && "\(error)".contains("ring") && "\(error)".contains("ulysses"), "\(error)")
        }
    }

    /// A peer that stops taking part mid-run: the sequence-parallel pass records the collective's
    /// failure and the trainer throws it (the process is not ended from inside the library).
    /// `mamba2`: a model of Mamba-2 layers only, whose first exchange is the mixer's gather.
    @Test(arguments: ["ring", "ulysses", "mamba2"])
    func aLostSequencePeerIsThrownByTheTrainer(mode: String) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let corpus = try makeCorpus(in: directory)
        let mixer = mode == "mamba2" ? ["model.sequence_mixer=mamba2", "model.ssm_chunk_size=4"] : ["parallel.sequence_mode=\(mode)"]
        let config = try RunConfig(file: nil, overrides: Self.overrides(data: corpus, run: directory.file("run"))
            + ["parallel.sequence=2"] + mixer)
        let results = InProcessCommunicator.run(size: 2, timeoutSeconds: 2) { comm -> Double in
            let trainer = try Trainer(config: config, world: comm)
            guard comm.rank == 0 else { return 0 }   // rank 1 never takes a step
            return try trainer.trainStep()
        }
        guard case .failure(let error) = results[0] else { Issue.record("rank 0 finished a step without its peer"); return }
        #expect(error is CollectiveError, "\(error)")
        #expect("\(error)".contains("rank 1"), "the error names the missing rank: \(error)")
    }
}
