/// A problem with a run config: in a file or a `--set` override, or one found when training
/// starts (against the ranks started, the data, or a checkpoint). Each case carries what it
/// names; `description` is one line that says where the problem is and what to change.
public enum ConfigError: Error, Equatable, CustomStringConvertible {
    // Reading a file or override.
    case unreadableFile(path: String)
    case invalidYAML(file: String, line: Int?, problem: String)
    /// `what` is "the top level" or a section such as "section 'train'".
    case notAMapping(what: String, origin: ConfigOrigin)
    case unknownKey(key: String, suggestion: String, origin: ConfigOrigin)
    case duplicateKey(key: String, origin: ConfigOrigin, first: ConfigOrigin)
    case malformedOverride(String)
    case wrongType(key: String, value: String, expected: ConfigKind, origin: ConfigOrigin)

    // Validating the resolved values.
    case outOfRange(key: String, value: String, rule: ConfigRule, origin: ConfigOrigin)
    /// `ModelConfig.problems` of the model keys.
    case invalidModel(source: String, problems: [String])

    // Starting a run.
    case sequenceDoesNotDivideWorld(source: String, sequence: Int, worldSize: Int)
    case sequenceParallelismUnavailable(source: String, sequence: Int)
    case batchDoesNotDivide(source: String, globalBatch: Int, dataRanks: Int)
    case vocabularyTooSmall(source: String, vocabSize: Int, dataVocabulary: Int, directory: String)
    case runDirectoryInUse(runDirectory: String, checkpoint: String)
    case configChanged(checkpoint: String, changes: [String])
    /// Rank 0's problem while resuming, relayed to every rank (its message as rank 0 had it).
    case resumeFailed(message: String)

    public var description: String {
        switch self {
        case .unreadableFile(let path):
            return "config file \(path) cannot be read; pass an existing file such as configs/tiny.yaml"
        case .invalidYAML(let file, let line, let problem):
            return "\(ConfigOrigin.file(file, line: line)): not valid YAML (\(problem)); fix the syntax"
        case .notAMapping(let what, let origin):
            return "\(origin): \(what) must be a mapping of keys (model:, data:, train:, ... each with `key: value` lines)"
        case .unknownKey(let key, let suggestion, let origin):
            return "\(origin): unknown key '\(key)'; did you mean '\(suggestion)'? (`tessera train --help-config` lists every key)"
        case .duplicateKey(let key, let origin, let first):
            return "\(origin): \(key) is set twice (first at \(first)); keep one"
        case .malformedOverride(let text):
            return "--set \(text): expected key=value, e.g. --set train.steps=100"
        case .wrongType(let key, let value, let expected, let origin):
            return "\(origin): \(key) = '\(value)' is not \(expected.expectation)"
        case .outOfRange(let key, let value, let rule, let origin):
            return "\(origin): \(key) = \(value) \(rule.requirement ?? "is out of range")"
        case .invalidModel(let source, let problems):
            return "\(source): " + problems.joined(separator: "; ")
        case .sequenceDoesNotDivideWorld(let source, let sequence, let worldSize):
            return "\(source): parallel.sequence = \(sequence) does not divide the \(worldSize) ranks started"
        case .sequenceParallelismUnavailable(let source, let sequence):
            return "\(source): parallel.sequence = \(sequence): sequence parallelism is not built yet (it comes with ring attention); set parallel.sequence=1"
        case .batchDoesNotDivide(let source, let globalBatch, let dataRanks):
            return "\(source): train.global_batch = \(globalBatch) does not divide over parallel.data = \(dataRanks) ranks; choose a multiple of \(dataRanks)"
        case .vocabularyTooSmall(let source, let vocabSize, let dataVocabulary, let directory):
            return "\(source): model.vocab_size = \(vocabSize) is smaller than the data's vocabulary (\(dataVocabulary) in \(directory))"
        case .runDirectoryInUse(let runDirectory, let checkpoint):
            return "run.dir \(runDirectory) already holds checkpoint \(checkpoint); pass --resume to continue it, or --set run.dir=NEW to start over"
        case .configChanged(let checkpoint, let changes):
            return "cannot resume from \(checkpoint): the config changed (\(changes.joined(separator: ", "))); restore those keys or start a new run.dir"
        case .resumeFailed(let message):
            return message
        }
    }
}
