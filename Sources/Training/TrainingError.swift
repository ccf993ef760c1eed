/// Why training cannot start or go on; each case names what it concerns and what to change.
public enum TrainingError: Error, Equatable, CustomStringConvertible {
    /// A split holds fewer tokens than one step (or one validation sample) needs.
    case dataTooSmall(directory: String, split: String, tokens: Int, needed: Int, hint: String)
    /// The data's vocabulary does not fit the model's.
    case vocabularyTooSmall(source: String, modelVocabulary: Int, dataVocabulary: Int, directory: String)
    /// The parallel layout does not fit the ranks or the batch.
    case layout(source: String, problem: String)
    /// A resumed run's config changes numbers the checkpoint was trained with.
    case resumeConfigChanged(checkpoint: String, changes: [String])
    /// The checkpoint to resume from could not be used.
    case resumeFailed(checkpoint: String, reason: String)
    /// `run.dir` already holds a checkpoint and `--resume` was not given.
    case runDirectoryHasCheckpoints(directory: String, checkpoint: String)
    /// A rank reported a problem that every rank now raises (e.g. rank 0 could not read a checkpoint).
    case reportedByRank(rank: Int, message: String)

    public var description: String {
        switch self {
        case let .dataTooSmall(directory, split, tokens, needed, hint):
            return "\(directory) \(split) split has \(tokens) tokens, needs at least \(needed); \(hint)"
        case let .vocabularyTooSmall(source, model, data, directory):
            return "\(source): model.vocab_size = \(model) is smaller than the data's vocabulary (\(data) in \(directory))"
        case let .layout(source, problem):
            return "\(source): \(problem)"
        case let .resumeConfigChanged(checkpoint, changes):
            return "cannot resume from \(checkpoint): the config changed (\(changes.joined(separator: ", "))); restore those keys or start a new run.dir"
        case let .resumeFailed(checkpoint, reason):
            return "cannot resume from \(checkpoint): \(reason)"
        case let .runDirectoryHasCheckpoints(directory, checkpoint):
            return "run.dir \(directory) already holds checkpoint \(checkpoint); pass --resume to continue it, or --set run.dir=NEW to start over"
        case let .reportedByRank(_, message):
            return message
        }
    }
}
