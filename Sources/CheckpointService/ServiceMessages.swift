import Checkpointing
import Foundation

/// A file of a part as announced before its bytes: name, size and SHA-256 (lower-case hex;
/// empty in an upload that sends each file's SHA-256 after its bytes, in a `fileEnd` frame).
public struct PartFileEntry: Codable, Equatable, Sendable {
    public var name: String
    public var size: Int
    public var sha256: String
}

/// The header of an uploaded part (`FrameType.putPart`), also kept by the service as the
/// part's manifest once its files are durable.
public struct PartHeader: Codable, Equatable, Sendable {
    public var step: Int
    public var rank: Int
    public var ranks: Int
    public var files: [PartFileEntry]
}

/// The service's answer to a part: durable, and whether it completed (committed) the step.
public struct PartReceipt: Codable, Equatable, Sendable {
    public var step: Int
    public var rank: Int
    public var committed: Bool
}

/// A complete checkpoint held by the service.
public struct StepInfo: Codable, Equatable, Sendable {
    public var step: Int
    public var validationLoss: Double?
    /// Total size of its files.
    public var bytes: Int
}

struct GetRequest: Codable { var step: Int }
struct FileBegin: Codable { var name: String; var size: Int }
struct FileEnd: Codable { var sha256: String }

/// `HOST:PORT` of the checkpoint service.
public struct ServiceAddress: Equatable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) { self.host = host; self.port = port }

    /// Parses `HOST:PORT` (port 0 lets a listener pick one); anything else is `invalidAddress`.
    public init(_ text: String) throws {
        guard let colon = text.lastIndex(of: ":"), colon != text.startIndex,
              let port = UInt16(text[text.index(after: colon)...]) else { throw CheckpointServiceError.invalidAddress(text) }
        host = String(text[..<colon]); self.port = port
    }

    public var description: String { "\(host):\(port)" }
}

extension PartHeader {
    /// Names that are not files of a checkpoint: reserved by the commit, hidden, or paths.
    static let reserved: Set<String> = [CheckpointLayout.checksums, CheckpointLayout.done]

    /// Refuses a header a service must not act on, naming the field and the limit it breaks:
    /// step in `0...CheckpointLayout.maxStep`, ranks in `1...ServiceLimits.maxRanks`, rank below
    /// ranks, at most `maxFilesPerPart` files, names `ServiceLimits.problem(withFileName:)`
    /// accepts and none twice, sizes in `0...maxFileBytes`, SHA-256 as 64 lower-case hex digits
    /// (or, in an upload's header with `sumsFollow`, empty: the file's `fileEnd` frame gives it).
    func validate(sumsFollow: Bool = false) throws {
        let what = "step \(step) rank \(rank)"
        func bad(_ reason: String) -> CheckpointServiceError { .invalidPart(reason: "\(what): \(reason)") }
        try ServiceLimits.check("step", step, in: 0...CheckpointLayout.maxStep, what)
        try ServiceLimits.check("ranks", ranks, in: 1...ServiceLimits.maxRanks, what)
        try ServiceLimits.check("rank", rank, in: 0...(ranks - 1), what)
        try ServiceLimits.check("the number of files", files.count, in: 0...ServiceLimits.maxFilesPerPart, what)
        var seen = Set<String>()
        for file in files {
            if let problem = ServiceLimits.problem(withFileName: file.name) { throw bad(problem) }
            guard !Self.reserved.contains(file.name) else {
                throw bad("file name '\(file.name)' is reserved (\(Self.reserved.sorted().joined(separator: " and ")) are written by the commit)")
            }
            guard seen.insert(file.name).inserted else { throw bad("file \(file.name) is listed twice") }
            try ServiceLimits.check("size of \(file.name)", file.size, in: 0...ServiceLimits.maxFileBytes, what)
            guard CheckpointLayout.isSHA256(file.sha256) || (sumsFollow && file.sha256.isEmpty) else {
                throw bad("file \(file.name) has a SHA-256 that is not 64 lower-case hex digits")
            }
        }
    }
}
