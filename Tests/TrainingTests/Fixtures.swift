import Collectives
import Foundation
import TensorCore
import Training
import _TestSupport

/// A small corpus with learnable structure (words from a fixed list, seeded), prepared as shards.
func makeCorpus(in directory: TemporaryDirectory, bytes: Int = 30_000) throws -> String {
    var rng = RNG(seed: 42)
    let words = ["the", "king", "queen", "doth", "speak", "to", "thee", "my", "lord", "and", "so", "farewell"]
    var text = ""
    while text.utf8.count < bytes {
        text += words[rng.nextInt(below: words.count)] + (rng.nextInt(below: 8) == 0 ? ".\n" : " ")
    }
    try text.write(toFile: directory.file("corpus.txt"), atomically: true, encoding: .utf8)
    let output = directory.file("data")
    try? FileManager.default.removeItem(atPath: output)   // a fresh corpus (prepare refuses a directory holding files)
    _ = try DataPreparation.prepare(inputs: [directory.file("corpus.txt")], output: output, valFraction: 0.1)
    return output
}

/// A tiny model and schedule that run fast in tests.
func tinyOverrides(data: String, run: String, steps: Int = 20, batch: Int = 12) -> [String] {
    ["model.d_model=16", "model.layers=2", "model.heads=2", "model.kv_heads=1", "model.ffn_hidden=24",
     "data.dir=\(data)", "data.seq_len=16", "train.steps=\(steps)", "train.global_batch=\(batch)",
     "train.lr=3e-3", "train.warmup_steps=3", "train.min_lr=3e-4", "eval.every=0", "eval.batches=2",
     "run.dir=\(run)", "parallel.bucket_mb=0.001"]
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
