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
    public var runDirectory: URL { URL(fileURLWithPath: config.run.dir) }
    public var store: CheckpointStore { CheckpointStore(root: runDirectory.appendingPathComponent("checkpoints")) }

    public init(config: RunConfig, world: Communicator) throws {
        self.config = config
        let sequence = config.parallel.sequence
        var data = config.parallel.data
        if data == 0 {
            guard world.size % sequence == 0 else {
                throw ConfigError.sequenceDoesNotDivideWorld(source: config.source, sequence: sequence, worldSize: world.size)
            }
            data = world.size / sequence
        }
        guard sequence == 1 else {
            throw ConfigError.sequenceParallelismUnavailable(source: config.source, sequence: sequence)
        }
        grid = try ProcessGrid(world: world, data: data, sequence: sequence)
        let globalBatch = config.train.globalBatch
        guard globalBatch % data == 0 else {
            throw ConfigError.batchDoesNotDivide(source: config.source, globalBatch: globalBatch, dataRanks: data)
        }
        localBatch = globalBatch / data
        length = config.data.seqLen

        let directory = config.data.dir
        train = try TokenDataset(directory: directory, split: "train")
        validation = try TokenDataset(directory: directory, split: "val")
        if train.sampleCount(length: length) < globalBatch {
            throw DataError("\(directory) train split has \(train.tokens.count) tokens, needs at least train.global_batch × data.seq_len + 1 = \(globalBatch * length + 1); lower data.seq_len or train.global_batch, or add data")
        }
        if validation.sampleCount(length: length) < 1 {
            throw DataError("\(directory) val split has \(validation.tokens.count) tokens, needs at least data.seq_len + 1 = \(length + 1); lower data.seq_len, or prepare with a larger --val-fraction")
        }
        let model = try TransformerLM(config: config.modelConfig, seed: UInt64(config.train.seed))
        guard train.vocabSize <= model.config.vocabSize else {
            throw ConfigError.vocabularyTooSmall(source: config.source, vocabSize: model.config.vocabSize, dataVocabulary: train.vocabSize, directory: directory)
        }
        self.model = model
        sampler = Sampler(sampleCount: train.sampleCount(length: length), seed: UInt64(config.train.seed))
        optimizer = AdamW(beta1: Float(config.train.beta1), beta2: Float(config.train.beta2),
                          eps: Float(config.train.eps), weightDecay: Float(config.train.weightDecay))
        schedule = LearningRateSchedule(peak: Float(config.train.lr), minimum: Float(config.train.minLr),
                                        warmupSteps: config.train.warmupSteps, totalSteps: config.train.steps)
        exponentialAverage = FloatBuffer(count: model.parameterCount)
        exponentialAverageSquares = FloatBuffer(count: model.parameterCount)
        reducer = GradientReducer(comm: grid.data, gradients: model.parameters.gradients,
                                  bucketBytes: Int(Float(config.parallel.bucketMB) * 1_048_576), overlap: config.parallel.overlap)
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
        let clip = GradientClipping.scale(norm: norm, maxNorm: Float(config.train.gradClip))
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
        let batches = batches ?? config.eval.batches
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
                           state: TrainerState(step: step, seed: UInt64(config.train.seed), samplesSeen: samplesSeen,
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
            store.prune(keep: config.checkpoint.keep)
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
                        throw ConfigError.configChanged(checkpoint: latest.path, changes: changes)
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
        if !message.isEmpty { throw ConfigError.resumeFailed(message: message) }
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
