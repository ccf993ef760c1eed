import Collectives
import Foundation
import Models
import Testing
import TensorCore
import Training
import TrainingConfig
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
    /// Bytes of parameters, gradients and moments this rank held by design (`Trainer.stateBytes`).
    var stateBytes = 0
    /// Floats of the parameters this rank owns (`Trainer.ownedParameterFloats`).
    var ownedFloats = 0
    /// Parameter values reading exactly 0 after the last step, before gathering them whole
    /// (pages given back under `parallel.zero` = 3).
    var droppedValues = 0
    /// Each step's auxiliary losses (Σ over layers, by name) and MoE routing by layer.
    var auxiliaryLosses: [[String: Double]] = []
    var routing: [[Int: RoutingSummary]] = []
}

/// Trains `steps` steps of `config` on `ranks` in-process ranks (threads); each rank's view.
func trainInProcess(_ config: RunConfig, ranks: Int, steps: Int, saveCheckpoint: Bool = false) throws -> [RankRun] {
    let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 60) { comm -> RankRun in
        let trainer = try Trainer(config: config, world: comm)
        var seen = RankRun()
        for _ in 0..<steps {
            seen.losses.append(try trainer.trainStep())
            seen.gradientNorms.append(trainer.lastGradientNorm)
            seen.auxiliaryLosses.append(trainer.auxiliaries.totals)
            seen.routing.append(trainer.auxiliaries.routing)
        }
        let p = trainer.model.parameters
        seen.droppedValues = p.values.buffer.reduce(0) { $0 + ($1 == 0 ? 1 : 0) }
        try trainer.gatherParameters()
        seen.parameters = p.values.array
        for e in p.entries { seen.namedParameters[e.name] = Array(p.values.buffer[e.range]) }
        seen.stateBytes = trainer.stateBytes
        seen.ownedFloats = trainer.ownedParameterFloats
        if saveCheckpoint { seen.checkpoint = try trainer.saveCheckpoint() }
        return seen
    }
    return try results.map { try $0.get() }
}

/// Greedy generation with `model`'s incremental decoding from `prompt`, `steps` tokens: every
/// step's logits equal recomputing the whole sequence (same argmax, relative error < 1e-4).
func expectIncrementalDecodingMatchesFullForward(_ model: TransformerLM, prompt: String = "the king", steps: Int) throws {
    let session = try InferenceSession(model: model)
    var context: [Int32] = Array(prompt.utf8).map(Int32.init)
    var logits = try session.prefill(tokens: context)
    for _ in 0..<steps {
        let full = Array(try model.logits(tokens: context, batch: 1, length: context.count).suffix(model.config.vocabSize))
        #expect(TokenSampler.argmax(logits) == TokenSampler.argmax(full))
        #expect(maxRelativeError(logits, full) < 1e-4)
        context.append(Int32(TokenSampler.argmax(full)))
        logits = try session.decode(token: context.last!)
    }
}
