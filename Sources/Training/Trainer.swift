import Checkpointing
import Collectives
import Foundation
import Kernels
import Models
import TensorCore
import TrainingConfig

/// Data- and sequence-parallel training of the decoder: one optimizer step at a time (docs/ARCHITECTURE.md, "The data's
/// way through a training step"); `run` (TrainingRun.swift) is the loop around it.
///
/// Every rank runs the same code. Rank 0 reports, writes metrics and checkpoints. Call from a
/// plain thread (not the Swift concurrency pool): collectives block. Kernel threads come from
/// `train.threads` and travel with the model (`model.threads`).
public final class Trainer {
    public let config: RunConfig
    public let grid: ProcessGrid
    public let model: TransformerLM
    public let data: TrainingData
    public let optimizer: Optimizer
    public internal(set) var step = 0
    public internal(set) var samplesSeen = 0
    public private(set) var lastGradientNorm = 0.0
    /// The last step's auxiliary losses and routing, averaged over its passes.
    public internal(set) var auxiliaries = StepAuxiliaries()
    /// Sequences per forward/backward pass on this rank (`train.micro_batch`, 0: the local batch).
    public let microBatch: Int
    let schedule: LearningRateSchedule
    let reducer: GradientReducer
    /// Under `parallel.reduction: ordered`: the rank-count-independent sum (nil: allreduce).
    let ordered: OrderedReduction?
    let checkpoints: TrainingCheckpoints
    let experts: ExpertShardTransfer
    /// This rank's owned pieces under `parallel.zero` ≥ 1 (nil at 0).
    let partition: ZeroPartition?
    /// Under `parallel.zero` = 3: the parameters held in pieces, gathered layer by layer.
    let sharded: ShardedParameters?
    public var reporter: ProgressReporter?
    /// Polled after every step when set (the same on every rank): when it returns true on any
    /// rank, all ranks stop at that step, write a checkpoint and throw `TrainingInterrupted`.
    public var stopRequested: (() -> Bool)?
    /// Told, on rank 0, what `run` holds and has written (RunEvent), on the training thread.
    public var onRunEvent: ((RunEvent) -> Void)?
    /// The checkpoint step `run(resume: true)` continues from (nil: the newest). Newer
    /// checkpoints of the run are moved aside first (`supersedeCheckpoints(after:)`).
    public var resumeStep: Int?
    /// Lines rank 0's reporter prints once the run holds run.dir (the BLAS core's start line):
    /// a run refused at the door says one line, the refusal.
    public var startLines: [String] = []
    /// What `run` has gathered so far (TrainingRun.swift).
    var progress = RunProgress()

    /// `checkpointSink`: where this rank delivers its checkpoint parts and rank 0 finds the
    /// checkpoint to resume (default: the one the config names, `CheckpointSinks.make`).
    public init(config: RunConfig, world: Communicator, checkpointSink: CheckpointSink? = nil) throws {
        self.config = config
        let layout = try Self.layout(config, worldSize: world.size)
        if config.reduction == .ordered, let problem = OrderedReduction.problem(config, layout: layout) { throw problem }
        grid = try ProcessGrid(world: world, layout: layout)
        guard config.train.globalBatch % layout.data == 0 else {
            throw TrainingError.batchDoesNotDivide(source: config.origin(of: "train.global_batch"), globalBatch: config.train.globalBatch, dataRanks: layout.data)
        }
        let micro = config.train.microBatch == 0 ? config.train.globalBatch / layout.data : config.train.microBatch
        guard (config.train.globalBatch / layout.data) % micro == 0 else {
            throw TrainingError.microBatchDoesNotDivide(source: config.origin(of: "train.global_batch", "train.micro_batch", "parallel.data"),
                                                        globalBatch: config.train.globalBatch, dataRanks: layout.data, microBatch: micro)
        }
        microBatch = micro
        data = try TrainingData(directory: config.data.dir, length: config.data.seqLen, globalBatch: config.train.globalBatch,
                                seed: config.train.seed, dataRank: grid.dataIndex, dataRanks: layout.data,
                                sequenceRank: grid.sequenceIndex, sequenceRanks: layout.sequence)
        let model = try TransformerLM(config: config.modelConfig, seed: UInt64(config.train.seed), grid: grid)
        guard data.train.vocabSize <= model.config.vocabSize else {
            throw TrainingError.vocabularyTooSmall(source: config.origin(of: "model.vocab_size", "data.dir"), vocabSize: model.config.vocabSize,
                                                   dataVocabulary: data.train.vocabSize, directory: config.data.dir)
        }
        model.threads = KernelThreads(config.train.threads)
        model.precision = config.precision
        // Ordered: each micro-batch routes over its own tokens, so its gradient is its own.
        model.localRouting = config.reduction == .ordered
        self.model = model
        let train = config.train
        let bucketBytes = Int(config.parallel.bucketMB * 1_048_576)
        // Ordered: each rank owns the slice of the gradient it sums (`OrderedReduction.slices`).
        let flat = config.reduction == .ordered ? OrderedReduction.slices(count: model.parameters.count, ranks: layout.data) : nil
        partition = config.parallel.zero == 0 ? nil
            : ZeroPartition(stage: config.parallel.zero, parameters: model.parameters, grid: grid, chunkFloats: bucketBytes / 4, flat: flat)
        optimizer = Optimizer(rule: AdamW(beta1: Float(train.beta1), beta2: Float(train.beta2), eps: Float(train.eps),
                                          weightDecay: Float(train.weightDecay)), parameters: model.parameters, partition: partition)
        schedule = LearningRateSchedule(peak: Float(train.lr), minimum: Float(train.minLr), warmupSteps: train.warmupSteps,
                                        totalSteps: train.steps)
        // Expert dispatch and sequence-parallel attention communicate during the backward pass on
        // the training thread, and a communicator may be used by one thread at a time: no
        // overlapped reduction beside them; nor, at stage 3, parameter gathers beside a forward
        // pass that gathers routing statistics.
        let forwardBusy = config.parallel.zero == 3 && model.forwardCommunicates
        let reducer = GradientReducer(parameters: model.parameters, grid: grid, bucketBytes: bucketBytes,
                                      overlap: config.parallel.overlap && !model.backwardCommunicates && !forwardBusy && layout.sequence == 1
                                          && config.reduction == .allreduce,
                                      scatter: config.parallel.zero >= 2 ? partition : nil)
        self.reducer = reducer
        ordered = config.reduction == .ordered ? OrderedReduction(parameters: model.parameters, comm: grid.data, partition: partition) : nil
        let sharded = config.parallel.zero == 3 ? partition.map { ShardedParameters(partition: $0, reducer: reducer, model: model) } : nil
        self.sharded = sharded
        model.residency = sharded
        experts = ExpertShardTransfer(grid: grid, parameters: model.parameters, optimizer: optimizer, global: model.globalDeclarations)
        checkpoints = try TrainingCheckpoints(config: config, world: world, sink: checkpointSink)
    }

    /// The grid layout the config asks for on `worldSize` ranks (`parallel.data = 0`: the rest),
    /// with `parallel.expert` ranks of each data group holding different experts. Checked before
    /// any rank computes, the same on every rank.
    public static func layout(_ config: RunConfig, worldSize: Int) throws -> GridLayout {
        let sequence = config.parallel.sequence
        if let problem = SequenceSharding.problem(length: config.data.seqLen, ranks: sequence) {
            throw TrainingError.sequenceLengthDoesNotSplit(source: config.origin(of: "data.seq_len", "parallel.sequence"), problem: problem)
        }
        if config.parallel.sequenceMode == SequenceParallelMode.ulysses.rawValue,
           let problem = UlyssesAttention.problem(heads: config.model.heads, kvHeads: config.model.kvHeads, ranks: sequence) {
            throw TrainingError.headsDoNotSplit(source: config.origin(of: "model.heads", "model.kv_heads", "parallel.sequence"), problem: problem)
        }
        var data = config.parallel.data
        if data == 0 {
            guard worldSize % sequence == 0 else {
                throw TrainingError.sequenceDoesNotDivideWorld(source: config.origin(of: "parallel.sequence"), sequence: sequence, worldSize: worldSize)
            }
            data = worldSize / sequence
        }
        let expert = config.parallel.expert
        if expert > 1 {
            guard config.moe.experts > 0 else { throw TrainingError.expertParallelismWithoutExperts(source: config.origin(of: "parallel.expert"), expert: expert) }
            guard config.moe.experts % expert == 0 else {
                throw TrainingError.expertsDoNotDivide(source: config.origin(of: "moe.experts", "parallel.expert"), experts: config.moe.experts, expert: expert)
            }
        }
        guard config.parallel.zero <= 3 else { throw TrainingError.noSuchZeroStage(source: config.origin(of: "parallel.zero"), stage: config.parallel.zero) }
        return GridLayout(data: data, sequence: sequence, expert: expert)
    }

    public var isReporter: Bool { grid.world.rank == 0 }
    public var globalBatch: Int { data.globalBatch }
    public var tokensPerStep: Int { data.tokensPerStep }
    public var runDirectory: URL { URL(fileURLWithPath: config.run.dir) }
    public var store: CheckpointStore { checkpoints.store }
    /// Bytes this rank holds by design for parameters, gradients and AdamW moments (`parallel.zero`).
    public var stateBytes: Int {
        partition?.stateBytes(gatheredFloats: sharded?.gatheredFloats ?? 0) ?? ZeroPartition.stateBytes(unpartitioned: model.parameters)
    }

    /// Floats of the parameters whose optimizer state this rank keeps (all of them at `parallel.zero` = 0).
    public var ownedParameterFloats: Int { partition?.ownedCount ?? model.parameters.count }

    /// Makes `model.parameters.values` whole on every rank until the next step or pass (under
    /// `parallel.zero` = 3 each rank holds its pieces only between steps; below, a no-op).
    /// Every rank calls it.
    public func gatherParameters() throws { try sharded?.gatherAll() }

    // MARK: One step

    /// One optimizer step; returns the mean training loss of the global batch (before the update).
    @discardableResult
    public func trainStep() throws -> Double {
        let batch = data.trainBatch(samplesSeen: samplesSeen, microBatch: microBatch)
        let globalLoss: Double
        if let ordered { globalLoss = try orderedGradients(batch, ordered) } else { globalLoss = try reducedGradients(batch) }

        let p = model.parameters
        let norm: Double
        if let ordered { norm = try ordered.norm(grid: grid) } else if let partition, partition.stage >= 2 { norm = try GradientNorm.owned(partition, world: grid.world) } else {
            norm = try GradientNorm.global(p, grid: grid)
        }
        let clip = GradientClipping.scale(norm: norm, maxNorm: Float(config.train.gradClip))
        optimizer.step(learningRate: schedule.rate(at: step), gradientScale: clip, threads: model.threads)
        // Each owner updated its pieces; below stage 3 every rank gets them all now, at 3 layer by layer.
        if sharded == nil { try partition?.allGatherParameters() }
        step += 1
        samplesSeen += globalBatch
        lastGradientNorm = norm
        return globalLoss / Double(tokensPerStep)
    }

    /// The step's gradients under `parallel.reduction: allreduce`, summed over the data ranks;
    /// returns the global batch's summed loss.
    private func reducedGradients(_ batch: (tokens: [Int32], targets: [Int32])) throws -> Double {
        if let partition, partition.stage >= 2 { partition.clearGradients() } else { model.parameters.zeroGradients() }
        let reducer = self.reducer
        // Gradient accumulation: the passes add into the gradients; only the last one hands its
        // ranges to the reducer, so the step is reduced once, overlapped with that backward.
        // With the global batch's 1/N as every pass's scale, the cross-entropy adds up to the
        // global mean, and a mixture of experts' per-pass N_pass · aux · balance (its routing
        // statistics are the pass's, over the data ranks) to the mean over passes.
        let passes = data.localBatch / microBatch, span = microBatch * data.localLength
        var lossSum = 0.0
        auxiliaries = StepAuxiliaries()
        for pass in 0..<passes {
            let rows = (pass * span)..<((pass + 1) * span)
            let ready: ((Range<Int>) -> Void)? = pass == passes - 1 ? { reducer.ready($0) } : nil
            lossSum += try model.lossAndGradients(tokens: Array(batch.tokens[rows]), targets: Array(batch.targets[rows]), batch: microBatch,
                                                  length: data.localLength, positions: data.positions,
                                                  gradientScale: 1 / Float(tokensPerStep), ready: ready)
            auxiliaries.add(losses: model.auxiliaryLossesByLayer, routing: model.routing)
        }
        auxiliaries.average()
        try reducer.finish()
        return Double(try grid.world.allReduce(Float(lossSum), op: .sum))
    }

    /// Mean validation loss (nats per token) over `batches` fixed batches (default
    /// `eval.batches`) of the validation split, taken in order; all ranks take part.
    public func validationLoss(batches: Int? = nil) throws -> Double {
        try Evaluator(model: model, data: data, comm: grid.world, orderedMicroBatch: ordered == nil ? nil : microBatch)
            .validationLoss(batches: batches ?? config.eval.batches)
    }
}
