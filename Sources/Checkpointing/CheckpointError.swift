/// Why a checkpoint could not be read or written; every case names the file.
public enum CheckpointError: Error, Equatable, CustomStringConvertible {
    case missing(path: String, hint: String)
    case corrupt(path: String, reason: String)
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case let .missing(path, hint): return "\(path) does not exist; \(hint)"
        case let .corrupt(path, reason): return "\(path) is corrupt or truncated: \(reason); restore it or resume from an earlier checkpoint"
        case let .writeFailed(path, reason): return "cannot write \(path): \(reason)"
        }
    }
}
