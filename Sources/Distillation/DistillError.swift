/// Why a student cannot be built from a teacher or distilled; each case names what it
/// concerns and what to change.
public enum DistillError: Error, Equatable, CustomStringConvertible {
    /// `distill.keep_attention` names a layer the teacher does not have.
    case keptLayerOutOfRange(layer: Int, layers: Int)
    /// A layer list that does not parse (layer indices from 0, comma-separated).
    case badLayerList(key: String, value: String)
    /// A teacher layer to be replaced has no attention to take heads from (or to match in stage 1).
    case teacherLayerNotAttention(layer: Int)
    /// The teacher's weights lack a tensor the student copies, or hold it with another shape.
    case missingTeacherTensor(name: String, source: String)
    case teacherTensorShape(name: String, expected: [Int], found: [Int], source: String)
    /// The batch source gave a number of tokens other than batch × length.
    case badBatch(tokens: Int, batch: Int, length: Int)
    /// Teacher and student differ in layers, width or vocabulary.
    case shellMismatch(teacher: String, student: String)
    /// `step(stage:)` was asked for a stage other than 1, 2, 3.
    case noSuchStage(Int)
    /// The sequence does not split over the grid's sequence ranks.
    case sequenceDoesNotSplit(problem: String)

    public var description: String {
        switch self {
        case let .keptLayerOutOfRange(layer, layers):
            return "distill.keep_attention: layer \(layer) does not exist in the teacher (layers 0...\(layers - 1)); list layers below \(layers)"
        case let .badLayerList(key, value):
            return "\(key): \"\(value)\" is not a layer list; give layer indices from 0, comma-separated (e.g. 0,2), or nothing"
        case let .teacherLayerNotAttention(layer):
            return "teacher layer \(layer) is not an attention layer; distill a transformer teacher (or keep that layer with distill.keep_attention)"
        case let .missingTeacherTensor(name, source):
            return "\(source): the teacher has no tensor \(name); pass a checkpoint of the teacher the config describes"
        case let .teacherTensorShape(name, expected, found, source):
            return "\(source): teacher tensor \(name) has shape \(found), the student needs \(expected); pass a checkpoint of the teacher the config describes"
        case let .badBatch(tokens, batch, length):
            return "distillation batch: \(tokens) tokens given for batch \(batch) × length \(length) = \(batch * length); give exactly batch × length tokens"
        case let .shellMismatch(teacher, student):
            return "the student (\(student)) is not built on the teacher's shell (\(teacher)); build it with StudentBuilder from this teacher"
        case let .sequenceDoesNotSplit(problem):
            return problem
        case let .noSuchStage(stage):
            return "distillation stage \(stage) does not exist; stages are 1 (matrix orientation), 2 (hidden-state alignment), 3 (knowledge distillation)"
        }
    }
}
