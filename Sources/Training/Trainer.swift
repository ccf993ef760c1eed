import Checkpointing
import Collectives
import Foundation
import Kernels
import Models
import TensorCore

/// Data-parallel training of the decoder: the loop of DESIGN.md ("The data's way through a
/// training step"), validation, metrics and checkpoints.
///
/// Every rank runs the same code. Rank 0 reports, writes metrics and checkpoints; resuming
/// reads the checkpoint on rank 0 and broadcasts it, so other nodes need no shared disk.
/// Call from a plain thread (not the Swift concurrency pool): collectives block. The kernel
/// thread count (`train.threads`) is process-wide; the executable sets it (`Matmul.threads`).
public final class Trainer {
    public let config: RunConfig
    public let grid: ProcessGrid
    public let model: TransformerLM
    public let train: TokenDataset
    public let validation: TokenDataset
    public private(set) var step = 0
    public private(set) var samplesSeen = 0
    let sampler: Sampler
    let optimizer: AdamW
    let schedule: LearningRateSchedule
    let exponentialAverage: FloatBuffer
    let exponentialAverageSquares: FloatBuffer
    let reducer: GradientReducer
    let localBatch: Int
    let length: Int
    public var reporter: ProgressReporter?
    /// Polled after every step when set (the same on every rank): when it returns true on any
    /// rank, all ranks stop at that step, write a checkpoint and throw `TrainingInterrupted`.
    public var stopRequested: (() -> Bool)?
    public var runDirectory: URL { URL(fileURLWithPath: config.string("run.dir")) }
    public var store: CheckpointStore { CheckpointStore(root: runDirectory.appendingPathComponent("checkpoints")) }

    public init(config: RunConfig, world: Communicator) throws {
        self.config = config
        let sequence = config.int("parallel.sequence")
        var data = config.int("parallel.data")
        if data == 0 {
            guard world.size % sequence == 0 else {
                throw ConfigError("\(config.source): parallel.sequence = \(sequence) does not divide the \(world.size) ranks started")
            }
            data = world.size / sequence
        }
        guard sequence == 1 else {
            throw ConfigError("\(config.source): parallel.sequence = \(sequence): sequence parallelism is not built yet (it comes with ring attention); set parallel.sequence=1")
        }
        grid = try ProcessGrid(world: world, data: data, sequence: sequence)
        let globalBatch = config.int("train.global_batch")
        guard globalBatch % data == 0 else {
            throw ConfigError("\(config.source): train.global_batch = \(globalBatch) does not divide over parallel.data = \(data) ranks; choose a multiple of \(data)")
        }
        localBatch = globalBatch / data
        length = config.int("data.seq_len")

        let directory = config.string("data.dir")
        train = try TokenDataset(directory: directory, split: "train")
        validation = try TokenDataset(directory: directory, split: "val")
        if train.sampleCount(length: length) < globalBatch {
            throw DataError.tooFewTokens(directory: directory, split: "train", tokens: train.tokenCount, needed: globalBatch * length + 1, requirement: "train.global_batch × data.seq_len + 1")
        }
        if validation.sampleCount(length: length) < 1 {
            throw DataError.tooFewTokens(directory: directory, split: "val", tokens: validation.tokenCount, needed: length + 1, requirement: "data.seq_len + 1")
        }
        let model = try TransformerLM(config: config.model, seed: UInt64(config.int("train.seed")))
        guard train.vocabSize <= model.config.vocabSize else {
            throw ConfigError("\(config.source): model.vocab_size = \(model.config.vocabSize) is smaller than the data's vocabulary (\(train.vocabSize) in \(directory))")
        }
        self.model = model
        sampler = Sampler(sampleCount: train.sampleCount(length: length), seed: UInt64(config.int("train.seed")))
        optimizer = AdamW(beta1: config.float("train.beta1"), beta2: config.float("train.beta2"),
                          eps: config.float("train.eps"), weightDecay: config.float("train.weight_decay"))
        schedule = LearningRateSchedule(peak: config.float("train.lr"), minimum: config.float("train.min_lr"),
                                        warmupSteps: config.int("train.warmup_steps"), totalSteps: config.int("train.steps"))
        exponentialAverage = FloatBuffer(count: model.parameterCount)
        exponentialAverageSquares = FloatBuffer(count: model.parameterCount)
        reducer = GradientReducer(comm: grid.data, gradients: model.parameters.gradients,
                                  bucketBytes: Int(config.float("parallel.bucket_mb") * 1_048_576), overlap: config.bool("parallel.overlap"))
    }

    public var isReporter: Bool { grid.world.rank == 0 }
    public var globalBatch: Int { localBatch * grid.dataSize }
    public var tokensPerStep: Int { globalBatch * length }

    // MARK: One step

    /// One optimizer step; returns the mean training loss of the global batch (before the update).
    @discardableResult
    public func trainStep() throws -> Double {
        let samples = sampler.indices(samplesSeen: samplesSeen, globalBatch: globalBatch, rank: grid.dataIndex, ranks: grid.dataSize)
        let batch = train.batch(samples: samples, length: length)
        model.parameters.zeroGradients()
        let scale = 1 / Float(tokensPerStep)
        let reducer = self.reducer
        let lossSum = model.lossAndGradients(tokens: batch.tokens, targets: batch.targets, batch: localBatch, length: length,
                                             gradientScale: scale) { reducer.ready($0) }
        try reducer.finish()
        let globalLoss = try grid.data.allReduce(Float(lossSum), op: .sum)

        let p = model.parameters
        let norm = GradientClipping.sumOfSquares(p.gradients.pointer, count: p.count).squareRoot()
        let clip = GradientClipping.scale(norm: norm, maxNorm: config.float("train.grad_clip"))
        if clip != 1 { for i in 0..<p.count { p.gradients.pointer[i] *= clip } }
        let rate = schedule.rate(at: step)
        for e in p.entries {
            optimizer.update(parameters: p.values.pointer + e.offset, gradients: p.gradients.pointer + e.offset,
                             m: exponentialAverage.pointer + e.offset, v: exponentialAverageSquares.pointer + e.offset,
                             count: e.count, step: step + 1, learningRate: rate, decay: e.decays)
        }
        step += 1
        samplesSeen += globalBatch
        lastGradientNorm = norm
        return Double(globalLoss) / Double(tokensPerStep)
    }

    public private(set) var lastGradientNorm = 0.0

    /// Mean validation loss (nats per token) over `batches` fixed batches (default
    /// `eval.batches`) of the validation split, taken in order; all ranks take part.
    public func validationLoss(batches: Int? = nil) throws -> Double {
        let count = validation.sampleCount(length: length)
        let batches = batches ?? config.int("eval.batches")
        var total = 0.0
        for b in 0..<batches {
            let first = b * globalBatch + grid.dataIndex * localBatch
            let samples = (0..<localBatch).map { (first + $0) % count }
            let batch = validation.batch(samples: samples, length: length)
            total += model.lossSum(tokens: batch.tokens, targets: batch.targets, batch: localBatch, length: length)
        }
        let global = try grid.data.allReduce(Float(total), op: .sum)
        return Double(global) / Double(batches * tokensPerStep)
    }

    // MARK: Checkpoints

    public func checkpointContents() -> CheckpointContents {
        CheckpointContents(model: model.parameters.stateDict(), exponentialAverage: exponentialAverage.array,
                           exponentialAverageSquares: exponentialAverageSquares.array,
                           state: TrainerState(step: step, seed: UInt64(config.int("train.seed")), samplesSeen: samplesSeen,
                                               tokensSeen: samplesSeen * length, configHash: config.numericHash,
                                               dataParallel: grid.dataSize, sequenceParallel: grid.sequenceSize),
                           runConfig: config.yaml, huggingFaceConfig: model.config.huggingFaceConfig)
    }

    /// Rank 0 writes the checkpoint; the barrier before makes every rank reach the same step.
    @discardableResult
    public func saveCheckpoint() throws -> URL? {
        try grid.world.barrier()
        var written: URL?
        if isReporter {
            written = try store.write(checkpointContents())
            store.prune(keep: config.int("checkpoint.keep"))
        }
        try grid.world.barrier()
        return written
    }

    /// Loads the newest complete checkpoint of `run.dir` (rank 0 reads, everyone receives).
    /// Returns the step resumed from, or nil when there is none.
    public func resumeFromLatest() throws -> Int? {
        var problem = ""
        var contents: CheckpointContents?
        if isReporter {
            do {
                if let latest = store.latest() {
                    let loaded = try CheckpointStore.read(latest)
                    let saved = try RunConfig(resolvedYAML: loaded.runConfig, source: latest.path + "/run.yaml")
                    if loaded.state.configHash != config.numericHash {
                        let changes = config.numericDifferences(from: saved)
                        throw ConfigError("cannot resume from \(latest.path): the config changed (\(changes.joined(separator: ", "))); restore those keys or start a new run.dir")
                    }
                    try model.parameters.load(loaded.model, source: latest.path)
                    contents = loaded
                }
            } catch {
                problem = "\(error)"
            }
        }
        // Every rank learns whether rank 0 succeeded, so all fail with the same message.
        let message = String(decoding: try grid.world.broadcastBytes(Array(problem.utf8), root: 0), as: UTF8.self)
        if !message.isEmpty { throw ConfigError(message) }
        var header: [Int64] = [0, 0, 0]   // found, step, samplesSeen
        if let contents {
            header = [1, Int64(contents.state.step), Int64(contents.state.samplesSeen)]
            contents.exponentialAverage.withUnsafeBufferPointer { exponentialAverage.pointer.update(from: $0.baseAddress!, count: $0.count) }
            contents.exponentialAverageSquares.withUnsafeBufferPointer { exponentialAverageSquares.pointer.update(from: $0.baseAddress!, count: $0.count) }
        }
        try header.withUnsafeMutableBytes { try grid.world.broadcast($0, root: 0) }
        guard header[0] == 1 else { return nil }
        for buffer in [model.parameters.values, exponentialAverage, exponentialAverageSquares] {
            try grid.world.broadcast(UnsafeMutableRawBufferPointer(start: buffer.pointer, count: buffer.count * 4), root: 0)
        }
        step = Int(header[1])
        samplesSeen = Int(header[2])
        return step
    }
}
