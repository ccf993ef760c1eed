/// Why a checkpoint could not be read or written; every case names the file.
public enum CheckpointError: Error, Equatable, CustomStringConvertible {
    case missing(path: String, hint: String)
    case corrupt(path: String, reason: String)
    case writeFailed(path: String, reason: String)
    /// The file's SHA-256 differs from the one `checksums.json` recorded when it was committed.
    case checksumMismatch(path: String)
    /// Ranks that had not delivered their part of a checkpoint when the deadline passed.
    case partsMissing(path: String, ranks: [Int], seconds: Double)

    public var description: String {
        switch self {
        case let .missing(path, hint): return "\(path) does not exist; \(hint)"
        case let .corrupt(path, reason): return "\(path) is corrupt or truncated: \(reason); restore it or resume from an earlier checkpoint"
        case let .writeFailed(path, reason): return "cannot write \(path): \(reason)"
        case let .checksumMismatch(path):
            return "\(path) does not match its SHA-256 in checksums.json (changed or damaged since it was written); restore it or resume from an earlier checkpoint"
        case let .partsMissing(path, ranks, seconds):
            let list = ranks.map(String.init).joined(separator: ", ")
            return "\(path): rank\(ranks.count == 1 ? "" : "s") \(list) did not deliver \(ranks.count == 1 ? "its part" : "their parts") of the checkpoint within \(Int(seconds)) s, so it was not committed; the previous checkpoint is intact"
        }
    }
}
