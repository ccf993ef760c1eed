import Testing
import Collectives
import Training
import TrainingConfig
import _TestSupport

/// Checkpoints of `parallel.zero` runs keep today's format (whole tensors and moments, shards
/// with global offsets), so a run saved with one stage and world size resumes with another and
/// continues as the uninterrupted run does.
@Suite struct ZeroResumeTests {
    static let steps = 10, stop = 5

    /// Runs `ranks` in-process ranks at `zero` to `stopAt` (nil: the end), resuming when asked;
    /// rank 0's losses of this invocation and each rank's parameters at the end.
    static func run(ranks: Int, zero: Int, data: String, run: String, resume: Bool, stopAt: Int?) throws -> (losses: [Double], parameters: [[Float]]) {
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: run, steps: steps) + ["parallel.zero=\(zero)"])
        let results = try InProcessCommunicator.run(size: ranks, timeoutSeconds: 60) { comm -> ([Double], [Float]) in
            let trainer = try Trainer(config: config, world: comm)
            let losses = try trainer.run(resume: resume, stopAt: stopAt).losses
            try trainer.gatherParameters()   // whole under parallel.zero = 3
            return (losses, trainer.model.parameters.values.array)
        }.map { try $0.get() }
        return (results[0].0, results.map(\.1))
    }

    @Test(arguments: [(0, 2, 1, 2), (1, 2, 0, 2), (1, 2, 2, 2), (2, 2, 0, 2), (2, 2, 2, 3), (2, 3, 1, 2), (0, 1, 2, 4),
                      (0, 2, 3, 2), (3, 2, 0, 2), (2, 2, 3, 3), (3, 3, 1, 2)])
    func aRunResumesWithAnotherStageAndWorldSize(fromZero: Int, fromRanks: Int, toZero: Int, toRanks: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let whole = try Self.run(ranks: 1, zero: 0, data: data, run: directory.file("whole"), resume: false, stopAt: nil)
        let first = try Self.run(ranks: fromRanks, zero: fromZero, data: data, run: directory.file("moved"), resume: false, stopAt: Self.stop)
        let second = try Self.run(ranks: toRanks, zero: toZero, data: data, run: directory.file("moved"), resume: true, stopAt: nil)
        let label = "zero \(fromZero) on \(fromRanks) → zero \(toZero) on \(toRanks)"
        #expect(first.losses.count == Self.stop && second.losses.count == Self.steps - Self.stop, "\(label)")
        #expect(maxRelativeError(first.losses + second.losses, whole.losses) < 1e-5, "\(label): \(first.losses + second.losses) vs \(whole.losses)")
        for (rank, values) in second.parameters.enumerated() {
            #expect(values == second.parameters[0], "\(label): rank \(rank) differs from rank 0")
            #expect(maxRelativeError(values, whole.parameters[0]) < 1e-5, "\(label): \(DataParallelExactnessTests.worst(values, whole.parameters[0]))")
        }
        // Stages 0 and 1 sum gradients the same way: on the same ranks the resumed run is the
        // uninterrupted one bit for bit.
        if fromRanks == toRanks && fromZero < 2 && toZero < 2 {
            let straight = try Self.run(ranks: fromRanks, zero: 0, data: data, run: directory.file("straight"), resume: false, stopAt: nil)
            #expect(first.losses + second.losses == straight.losses, "\(label)")
            #expect(second.parameters[0] == straight.parameters[0], "\(label)")
        }
    }
}
