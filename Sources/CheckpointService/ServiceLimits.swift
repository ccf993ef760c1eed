import Foundation

/// Bounds on every number a peer or a file on disk gives the checkpoint service. Each is checked
/// before anything is allocated or looped over, and a value over one is refused with a line
/// naming the field and the limit (`invalidPart`), never trusted.
public enum ServiceLimits {
    /// Ranks of one job: far above any CPU cluster Tessera runs on; bounds every set or loop over ranks.
    public static let maxRanks = 1 << 16
    /// Files in one rank's part (a rank sends at most two shards and rank 0's few metadata files).
    public static let maxFilesPerPart = 1024
    /// Bytes of one file of a part: 1 TiB (a 7B model's AdamW shard on one rank is ~84 GB).
    public static let maxFileBytes = 1 << 40
    /// Bytes of a file name: NAME_MAX (255) less room for the `ID-` prefix the service gives a
    /// file while it arrives (`CheckpointServer.incomingURL`), so a name it accepts always fits.
    public static let maxFileNameBytes = 200
    /// Bytes of a path the service creates (Linux PATH_MAX is 4096 with its terminating NUL).
    public static let maxPathBytes = 4095
    /// Bytes of a JSON message or manifest (a part header listing `maxFilesPerPart` files is ~0.3 MiB).
    public static let maxJSONBytes = 1 << 20
    /// Bytes of a job's result file (its checkpoint path and log lines, `ServiceJobProcesses`).
    public static let maxJobResultBytes = 1 << 24

    /// `value` within `range`, or `invalidPart` naming `field` and the limit.
    static func check(_ field: String, _ value: Int, in range: ClosedRange<Int>, _ context: String) throws {
        guard range.contains(value) else {
            throw CheckpointServiceError.invalidPart(reason: "\(context): \(field) \(value) is outside \(range.lowerBound)...\(range.upperBound)")
        }
    }

    /// A file name a part may carry: not empty, no NUL, no slash, no leading dot, at most
    /// `maxFileNameBytes` bytes of UTF-8; nil when it may, else why not.
    static func problem(withFileName name: String) -> String? {
        let bytes = name.utf8
        if bytes.isEmpty { return "an empty file name" }
        if bytes.contains(0) { return "file name '\(name.replacingOccurrences(of: "\0", with: "\\0"))' holds a NUL byte" }
        if bytes.count > maxFileNameBytes { return "file name of \(bytes.count) bytes is over the \(maxFileNameBytes)-byte limit" }
        if name.hasPrefix(".") || name.contains("/") { return "file name '\(name)' has a slash or a leading dot" }
        return nil
    }
}

extension PartHeader {
    /// A header from JSON a peer or a manifest file supplies: at most `maxJSONBytes`, decoded,
    /// then `validate()`d. `source` names where it came from, for the error. `sumsFollow`: an
    /// upload's header, whose files may leave their SHA-256 to their `fileEnd` frames.
    static func decode(_ bytes: some Collection<UInt8>, from source: String, sumsFollow: Bool = false) throws -> PartHeader {
        guard bytes.count <= ServiceLimits.maxJSONBytes else {
            throw CheckpointServiceError.invalidPart(reason: "\(source): a part header of \(bytes.count) bytes is over the \(ServiceLimits.maxJSONBytes)-byte limit")
        }
        guard let header = try? JSONDecoder().decode(PartHeader.self, from: Data(bytes)) else {
            throw CheckpointServiceError.invalidPart(reason: "\(source): a part header that is not JSON of one")
        }
        try header.validate(sumsFollow: sumsFollow)
        return header
    }
}
