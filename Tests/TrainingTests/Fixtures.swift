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
