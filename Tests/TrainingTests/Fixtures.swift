import Collectives
import Foundation
import TensorCore
import Training
import _TestSupport

/// A small corpus with learnable structure, prepared as shards (the pinned run's: `PinnedRun`).
func makeCorpus(in directory: TemporaryDirectory, bytes: Int = 30_000) throws -> String {
    try PinnedRun.prepareCorpus(in: directory.path, bytes: bytes)
}

/// A tiny model and schedule that run fast in tests (the pinned run's: `PinnedRun`).
func tinyOverrides(data: String, run: String, steps: Int = 20, batch: Int = 12) -> [String] {
    PinnedRun.overrides(data: data, run: run, steps: steps, batch: batch)
}

/// What one rank saw over a short in-process run.
struct RankRun {
    var losses: [Double] = []
    var gradientNorms: [Double] = []
    /// This rank's parameters at the end, flat and by name.
    var parameters: [Float] = []
    var namedParameters: [String: [Float]] = [:]
    /// The checkpoint written at the end (rank 0), when asked for.
    var checkpoint: URL?
}

/// Trains `steps` steps of `config` on `ranks` in-process ranks (threads); each rank's view.
func trainInProcess(_ config: RunConfig, ranks: Int, steps: Int, saveCheckpoint: Bool = false) throws -> [RankRun] {
    let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 60) { comm -> RankRun in
        let trainer = try Trainer(config: config, world: comm)
        var seen = RankRun()
        for _ in 0..<steps {
            seen.losses.append(try trainer.trainStep())
            seen.gradientNorms.append(trainer.lastGradientNorm)
        }
        let p = trainer.model.parameters
        seen.parameters = p.values.array
        for e in p.entries { seen.namedParameters[e.name] = Array(p.values.buffer[e.range]) }
        if saveCheckpoint { seen.checkpoint = try trainer.saveCheckpoint() }
        return seen
    }
    return try results.map { try $0.get() }
}
