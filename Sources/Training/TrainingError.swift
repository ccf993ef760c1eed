/// Why training cannot start or go on; each case names what it concerns and what to change.
public enum TrainingError: Error, Equatable, CustomStringConvertible {
    /// The data's vocabulary does not fit the model's.
    case vocabularyTooSmall(source: String, vocabSize: Int, dataVocabulary: Int, directory: String)
    case sequenceDoesNotDivideWorld(source: String, sequence: Int, worldSize: Int)
    /// data.seq_len does not cut into 2 × parallel.sequence zigzag chunks.
    case sequenceLengthDoesNotSplit(source: String, problem: String)
    /// Ulysses cannot split model.heads / model.kv_heads over the sequence ranks.
    case headsDoNotSplit(source: String, problem: String)
    /// `parallel.expert` does not divide `moe.experts`.
    case expertsDoNotDivide(source: String, experts: Int, expert: Int)
    /// `parallel.expert > 1` for a model without experts.
    case expertParallelismWithoutExperts(source: String, expert: Int)
    /// The global batch does not split evenly over the data-parallel ranks.
    case batchDoesNotDivide(source: String, globalBatch: Int, dataRanks: Int)
    /// train.micro_batch × the data ranks does not divide train.global_batch.
    case microBatchDoesNotDivide(source: String, globalBatch: Int, dataRanks: Int, microBatch: Int)
    /// `parallel.reduction: ordered` with a layout, model or batch it does not support.
    case orderedReductionUnsupported(source: String, problem: String)
    /// No such ZeRO stage (parallel.zero > 3).
    case noSuchZeroStage(source: String, stage: Int)
    /// A resumed run's config changes numbers the checkpoint was trained with.
    case configChanged(checkpoint: String, changes: [String])
    /// The newest checkpoint is already at or past `train.steps`.
    case resumePastEnd(checkpoint: String, step: Int, steps: Int)
    /// `run.dir` already holds a checkpoint and `--resume` was not given.
    case runDirectoryInUse(runDirectory: String, checkpoint: String)
    /// Rank 0's problem while resuming, relayed to every rank (its message as rank 0 had it).
    case resumeFailed(message: String)
    /// Rank 0's problem taking run.dir (RunDirectoryLockError), relayed to the other ranks.
    case runDirectoryUnavailable(message: String)
    /// The asynchronous checkpoint save of other ranks failed (each says why in its own error).
    case checkpointFailedOnOtherRanks(ranks: [Int], step: Int?)
    /// The checkpoint sink could not be made ready (`CheckpointSink.prepare`) before step 1.
    case checkpointSinkUnusable(location: String, reason: String)

    public var description: String {
        switch self {
        case let .vocabularyTooSmall(source, vocabSize, dataVocabulary, directory):
            return "\(source): model.vocab_size = \(vocabSize) is smaller than the data's vocabulary (\(dataVocabulary) in \(directory))"
        case let .sequenceDoesNotDivideWorld(source, sequence, worldSize):
            return "\(source): parallel.sequence = \(sequence) does not divide the \(worldSize) ranks started"
        case let .sequenceLengthDoesNotSplit(source, problem), let .headsDoNotSplit(source, problem):
            return "\(source): \(problem)"
        case let .expertsDoNotDivide(source, experts, expert):
            return "\(source): moe.experts = \(experts) is not divisible by parallel.expert = \(expert); choose parallel.expert dividing moe.experts"
        case let .expertParallelismWithoutExperts(source, expert):
            return "\(source): parallel.expert = \(expert) needs mixture-of-experts layers; set moe.experts (a multiple of \(expert)) or parallel.expert=1"
        case let .batchDoesNotDivide(source, globalBatch, dataRanks):
            return "\(source): train.global_batch = \(globalBatch) does not divide over parallel.data = \(dataRanks) ranks; choose a multiple of \(dataRanks)"
        case let .microBatchDoesNotDivide(source, globalBatch, dataRanks, microBatch):
            let local = globalBatch / dataRanks
            return "\(source): train.global_batch = \(globalBatch) over parallel.data = \(dataRanks) ranks is \(local) sequences per rank, not a multiple of train.micro_batch = \(microBatch); choose a micro_batch dividing \(local)"
        case let .orderedReductionUnsupported(source, problem):
            return "\(source): parallel.reduction = ordered \(problem)"
        case let .noSuchZeroStage(source, stage):
            return "\(source): parallel.zero = \(stage) is not a ZeRO stage; set parallel.zero to 0, 1, 2 or 3"
        case let .configChanged(checkpoint, changes):
            return "cannot resume from \(checkpoint): the config changed (\(changes.joined(separator: ", "))); restore those keys or start a new run.dir"
        case let .resumePastEnd(checkpoint, step, steps):
            return "cannot resume from \(checkpoint): it is at step \(step), and train.steps = \(steps) would train nothing; raise it, e.g. --set train.steps=\(step + max(steps, 1))"
        case let .runDirectoryInUse(runDirectory, checkpoint):
            return "run.dir \(runDirectory) already holds checkpoint \(checkpoint); pass --resume to continue it, or --set run.dir=NEW to start over"
        case let .resumeFailed(message), let .runDirectoryUnavailable(message):
            return message
        case let .checkpointSinkUnusable(location, reason):
            return "checkpoints to \(location), checked before the first step: \(reason)"
        case let .checkpointFailedOnOtherRanks(ranks, step):
            let list = ranks.map(String.init).joined(separator: ", ")
            return "the checkpoint\(step.map { " of step \($0)" } ?? "") failed on rank\(ranks.count == 1 ? "" : "s") \(list) (see \(ranks.count == 1 ? "its" : "their") error); the run stops, the previous checkpoint is intact"

        }
    }
}
