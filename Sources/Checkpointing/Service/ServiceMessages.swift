import Foundation

/// A file of a part as announced before its bytes: name, size and SHA-256 (lower-case hex).
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

    /// Refuses a header a service must not act on, naming what is wrong.
    func validate() throws {
        func bad(_ reason: String) -> CheckpointServiceError { .invalidPart(reason: "step \(step) rank \(rank): \(reason)") }
        guard step >= 0, ranks >= 1, (0..<ranks).contains(rank) else {
            throw bad("needs step >= 0 and 0 <= rank < ranks (ranks \(ranks))")
        }
        var seen = Set<String>()
        for file in files {
            guard !file.name.isEmpty, !file.name.hasPrefix("."), !file.name.contains("/"), file.name.utf8.count <= 255,
                  !Self.reserved.contains(file.name) else {
                throw bad("file name '\(file.name)' is not allowed (no slashes, no leading dot, not \(Self.reserved.sorted().joined(separator: " or ")))")
            }
            guard seen.insert(file.name).inserted else { throw bad("file \(file.name) is listed twice") }
            guard file.size >= 0, file.sha256.count == 64, file.sha256.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
                throw bad("file \(file.name) has a bad size or SHA-256")
            }
        }
    }
}
