import Testing
import Collectives
import Training
import TrainingConfig
import _TestSupport

/// The kernel thread count travels with each model, so ranks that are threads of one process
/// may use different counts, and the numbers do not depend on it.
@Suite struct KernelThreadsTests {
    @Test func twoInProcessRanksWithDifferentThreadCountsMatchOneRank() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory, bytes: 60_000)
        // Sizes that take the threaded paths: 512 rows per rank (row-split norms, chunked SwiGLU),
        // products above the GEMM split threshold.
        let overrides = tinyOverrides(data: data, run: directory.file("run"), steps: 3, batch: 16)
            + ["model.d_model=64", "model.heads=4", "model.kv_heads=2", "model.ffn_hidden=256", "data.seq_len=64"]
        func train(ranks: Int, threads: @escaping (Int) -> Int) throws -> [(losses: [Double], parameters: [Float], threads: Int)] {
            let base = try RunConfig(file: nil, overrides: overrides)
            return try InProcessCommunicator.run(size: ranks, timeoutSeconds: 120) { comm in
                var config = base
                config.train.threads = threads(comm.rank)
                let trainer = try Trainer(config: config, world: comm)
                let losses = try (0..<3).map { _ in try trainer.trainStep() }
                return (losses, trainer.model.parameters.values.array, trainer.model.threads.count)
            }.map { try $0.get() }
        }
        let single = try train(ranks: 1) { _ in 1 }[0]
        let mixed = try train(ranks: 2) { rank in rank + 1 }
        #expect(mixed.map(\.threads) == [1, 2], "rank 0 runs 1 kernel thread, rank 1 two")
        #expect(mixed[0].parameters == mixed[1].parameters, "ranks agree bitwise")
        #expect(mixed[0].losses == mixed[1].losses)
        #expect(maxRelativeError(mixed[0].losses, single.losses) < 1e-5)
        #expect(maxRelativeError(mixed[0].parameters.map(Double.init), single.parameters.map(Double.init)) < 1e-5)
    }
}
