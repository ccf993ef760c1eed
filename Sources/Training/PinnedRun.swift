import Collectives
import Foundation
import Kernels
import TensorCore
import TokenData
import TrainingConfig

/// A short run whose losses and gradient norms are pinned: ten steps of a tiny model on a small
/// seeded corpus, with the materialised (`naive`) and the flash attention kernel. The pins are
/// what the code produced before the model reshape (commit 189ab09; the flash kernel's when it
/// was introduced), so a change that moves numbers is seen. `PinnedLossTests` checks them in the
/// debug build, `tessera selftest pinned` in the build that runs it (the release binary).
///
/// The pins hold within `tolerance` (relative), not bit for bit: every product goes through
/// OpenBLAS, and another kernel family (another CPU, or `OPENBLAS_CORETYPE`) sums in another
/// order. Measured: the SSE3 `Prescott` kernels move the gradient norms by up to 6e-8 relative
/// from the AVX-512 ones (the losses kept their bits). What the pins are for, a change of the
/// model, the data order or the optimizer, moves the losses by far more; a new summation order
/// inside a kernel (7th to 8th digit) passes, and is checked by that kernel's own tests against
/// its Float64 reference.
public enum PinnedRun {
    public static let losses: [Double] = [
        5.542783101399739, 5.5166810353597, 5.493261337280273, 5.432637532552083, 5.366668065388997,
        5.3011124928792315, 5.231283823649089, 5.207825660705566, 5.167113304138184, 5.154789924621582]
    public static let gradientNorms: [Double] = [
        0.8371477090261826, 0.9609784974292364, 0.8695348702704099, 1.0368986670033231, 0.9642713292754437,
        1.0643173481150199, 1.0831553270130172, 1.0997755490864907, 1.1168393562966106, 1.0527380552209848]

    /// Relative tolerance of the pins: a few hundred Float32 roundings of a loss or a norm,
    /// far below what a change of the model or of the data order moves them by.
    public static let tolerance = 1e-6
    /// How close the flash kernel's run must stay to the materialised kernel's pins.
    public static let flashToNaiveTolerance = 1e-5

    /// The flash kernel's run: the same losses (the attention outputs differ by rounding only,
    /// below what moves a Float32 loss here), gradient norms from the 8th digit.
    public static let flashLosses = losses
    public static let flashGradientNorms: [Double] = [
        0.8371477090261826, 0.9609784974292364, 0.8695348531334762, 1.0368986544287906, 0.9642713099588354,
        1.0643173411146825, 1.0831553751631409, 1.0997755423118531, 1.1168393596321755, 1.052738053451651]

    public static let steps = 10

    /// Writes a small corpus with learnable structure (words from a fixed list, seeded) to
    /// `directory`/corpus.txt and prepares it as token shards in `directory`/data (replacing
    /// what is there); returns the shards' directory.
    public static func prepareCorpus(in directory: String, bytes: Int = 30_000) throws -> String {
        var rng = RNG(seed: 42)
        let words = ["the", "king", "queen", "doth", "speak", "to", "thee", "my", "lord", "and", "so", "farewell"]
        var text = ""
        while text.utf8.count < bytes {
            text += words[rng.nextInt(below: words.count)] + (rng.nextInt(below: 8) == 0 ? ".\n" : " ")
        }
        let corpus = directory + "/corpus.txt", output = directory + "/data"
        try text.write(toFile: corpus, atomically: true, encoding: .utf8)
        try? FileManager.default.removeItem(atPath: output)   // a fresh corpus (prepare refuses a directory holding files)
        _ = try DataPreparation.prepare(inputs: [corpus], output: output, valFraction: 0.1)
        return output
    }

    /// The tiny model and schedule (config overrides) of the pinned run, on the shards in `data`.
    public static func overrides(data: String, run: String, steps: Int = 20, batch: Int = 12) -> [String] {
        ["model.d_model=16", "model.layers=2", "model.heads=2", "model.kv_heads=1", "model.ffn_hidden=24",
         "data.dir=\(data)", "data.seq_len=16", "train.steps=\(steps)", "train.global_batch=\(batch)",
         "train.lr=3e-3", "train.warmup_steps=3", "train.min_lr=3e-4", "eval.every=0", "eval.batches=2",
         "run.dir=\(run)", "parallel.bucket_mb=0.001"]
    }

    /// The pinned run with attention kernel `kernel` (naive or flash), one process, in a
    /// directory of its own under `directory`: its losses and gradient norms.
    public static func run(kernel: String, in directory: String) throws -> (losses: [Double], norms: [Double]) {
        let data = try prepareCorpus(in: directory)
        let overrides = overrides(data: data, run: directory + "/run-\(kernel)", steps: steps) + ["attention.kernel=\(kernel)"]
        let trainer = try Trainer(config: try RunConfig(file: nil, overrides: overrides), world: SingleProcessCommunicator())
        var losses: [Double] = [], norms: [Double] = []
        for _ in 0..<steps {
            losses.append(try trainer.trainStep())
            norms.append(trainer.lastGradientNorm)
        }
        return (losses, norms)
    }

    /// Both runs against their pins (what `tessera selftest pinned` prints), in a temporary
    /// directory under `scratch` that is removed afterwards.
    public static func check(scratch: URL = FileManager.default.temporaryDirectory) throws -> [SelfTestOutcome] {
        let directory = scratch.appendingPathComponent("tessera-pinned-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let naive = try run(kernel: "naive", in: directory.path), flash = try run(kernel: "flash", in: directory.path)
        return [
            compare("naive attention: \(steps) losses against their pins", naive.losses, losses, tolerance),
            compare("naive attention: \(steps) gradient norms against their pins", naive.norms, gradientNorms, tolerance),
            compare("flash attention: \(steps) losses against their pins", flash.losses, flashLosses, tolerance),
            compare("flash attention: \(steps) gradient norms against their pins", flash.norms, flashGradientNorms, tolerance),
            compare("flash attention: losses against the naive kernel's pins", flash.losses, losses, flashToNaiveTolerance),
            compare("flash attention: gradient norms against the naive kernel's pins", flash.norms, gradientNorms, flashToNaiveTolerance),
        ]
    }

    /// One comparison of numbers with their pins: the largest relative error (floor 1; NaN, or a
    /// different count, is infinite) against `tolerance`.
    public static func compare(_ name: String, _ got: [Double], _ pinned: [Double], _ tolerance: Double) -> SelfTestOutcome {
        SelfTestOutcome(name: name, error: KernelSelfTest.error(got, pinned), tolerance: tolerance)
    }
}
