/// A problem with a run config, in a file or a `--set` override (problems found when a run
/// starts are `TrainingError`s). Each case carries what it
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
        }
    }
}
