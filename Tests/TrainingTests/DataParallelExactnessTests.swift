import Testing
import Collectives
import Training
import _TestSupport

/// The project's main correctness property: N data-parallel ranks give the numbers one rank
/// gives, step by step.
@Suite struct DataParallelExactnessTests {
    static func losses(ranks: Int, overlap: Bool, data: String, run: String) throws -> [[Double]] {
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: run) + ["parallel.overlap=\(overlap)"])
        let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 60) { comm -> [Double] in
            let trainer = try Trainer(config: config, world: comm)
            return try (0..<20).map { _ in try trainer.trainStep() }
        }
        return try results.map { try $0.get() }
    }

    @Test(arguments: [(2, true), (3, true), (4, true), (2, false), (3, false)])
    func ranksMatchOneRankForTwentySteps(ranks: Int, overlap: Bool) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let single = try Self.losses(ranks: 1, overlap: overlap, data: data, run: directory.file("run1"))[0]
        let parallel = try Self.losses(ranks: ranks, overlap: overlap, data: data, run: directory.file("runN"))
        #expect(single.count == 20)
        #expect(single.last! < single.first! - 0.5, "the tiny model should learn: \(single.first!) → \(single.last!)")
        for rankLosses in parallel {
            #expect(rankLosses == parallel[0], "every rank reports the same loss")
            #expect(maxRelativeError(rankLosses, single) < 1e-5, "ranks=\(ranks): \(rankLosses) vs \(single)")
        }
    }
}
