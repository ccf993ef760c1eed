/// Why a model could not be built or loaded; each names the tensor, file or key.
public enum ModelError: Error, Equatable, CustomStringConvertible {
    case missingTensor(name: String, source: String)
    case unexpectedTensor(name: String, source: String)
    case shapeMismatch(name: String, expected: [Int], found: [Int], source: String)
    case invalidConfig([String])
    /// The grid's expert axis does not divide a layer's experts.
    case expertsDoNotDivide(experts: Int, expertRanks: Int)
    /// A layer whose sequence mixer cannot run with the sequence sharded over ranks.
    case sequenceParallelUnsupported(layer: Int, kind: String)

    public var description: String {
        switch self {
        case let .missingTensor(name, source): return "\(source): tensor \(name) is missing; was it written for another model config?"
        case let .unexpectedTensor(name, source): return "\(source): tensor \(name) is not part of this model; check model.* in the config"
        case let .shapeMismatch(name, expected, found, source): return "\(source): tensor \(name) has shape \(found), the model expects \(expected); check model.* in the config"
        case let .invalidConfig(problems): return "invalid model config: " + problems.joined(separator: "; ")
        case let .expertsDoNotDivide(experts, expertRanks):
            return "moe.experts = \(experts) is not divisible by parallel.expert = \(expertRanks); choose parallel.expert dividing moe.experts"
        case let .sequenceParallelUnsupported(layer, kind):
            return "layer \(layer): a \(kind) mixer cannot run with the sequence sharded; set parallel.sequence = 1 for this model"
        }
    }
}
