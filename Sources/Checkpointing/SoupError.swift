/// Why checkpoints cannot be souped (or exported); each case names the checkpoints, tensor,
/// key or option involved and what to change, in one line.
public enum SoupError: Error, Equatable, CustomStringConvertible {
    /// A tensor one ingredient has and another lacks (`kind`: "model" or "optimizer").
    case tensorMissing(name: String, kind: String, presentIn: String, absentFrom: String)
    case shapeMismatch(name: String, shape: [Int], checkpoint: String, otherShape: [Int], otherCheckpoint: String)
    case dtypeMismatch(name: String, dtype: String, checkpoint: String, otherDtype: String, otherCheckpoint: String)
    /// A key of `file` (config.json, or the model section of run.yaml) that differs.
    case configMismatch(file: String, key: String, value: String, checkpoint: String, otherValue: String, otherCheckpoint: String)
    case noIngredients
    /// `--val-data` names a directory that is not there.
    case validationDataMissing(directory: String)
    case weightCount(weights: Int, inputs: Int)
    case negativeWeight(weight: Double, input: String)
    case weightsDoNotSumToOne(sum: Double)
    /// `--weights` given to a method that does not take them.
    case weightsWithoutWeightedMethod(method: String)
    case outputNotEmpty(path: String)
    /// The model cannot be written as the Hugging Face architecture it maps to.
    case notExportable(checkpoint: String, reason: String)

    public var description: String {
        switch self {
        case let .tensorMissing(name, kind, presentIn, absentFrom):
            return "cannot soup: \(kind) tensor \(name) is in \(presentIn) but not in \(absentFrom); soup checkpoints of the same model"
        case let .shapeMismatch(name, shape, checkpoint, otherShape, otherCheckpoint):
            return "cannot soup: tensor \(name) has shape \(shape) in \(checkpoint) but \(otherShape) in \(otherCheckpoint); soup checkpoints of the same model"
        case let .dtypeMismatch(name, dtype, checkpoint, otherDtype, otherCheckpoint):
            return "cannot soup: tensor \(name) is \(dtype) in \(checkpoint) but \(otherDtype) in \(otherCheckpoint)"
        case let .configMismatch(file, key, value, checkpoint, otherValue, otherCheckpoint):
            return "cannot soup: \(file) key \(key) is \(value) in \(checkpoint) but \(otherValue) in \(otherCheckpoint); soup checkpoints of the same model"
        case .noIngredients:
            return "a soup needs at least one checkpoint: pass --inputs DIR..."
        case let .weightCount(weights, inputs):
            return "--weights has \(weights) value(s) for \(inputs) input(s); give one weight per input"
        case let .negativeWeight(weight, input):
            return "weight \(weight) of \(input) is negative; weights must be non-negative and sum to 1"
        case let .weightsDoNotSumToOne(sum):
            return "the weights sum to \(sum), not 1 (within 1e-6); rescale them"
        case let .weightsWithoutWeightedMethod(method):
            return "--weights is only for --method weighted (this is --method \(method))"
        case let .outputNotEmpty(path):
            return "\(path) already exists and is not an empty directory; choose a new --output (nothing was written)"
        case let .validationDataMissing(directory):
            return "--val-data \(directory) does not exist; pass a directory of token shards (tessera data prepare writes them), or leave --val-data out to use the best input's data.dir"
        case let .notExportable(checkpoint, reason):
            return "cannot export \(checkpoint): \(reason)"
        }
    }
}
