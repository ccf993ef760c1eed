import Foundation

/// Everything one side of a connection wrote, for checking what travelled.
public final class Recorder: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    public init() {}
    public func add(_ more: [UInt8]) { lock.lock(); bytes += more; lock.unlock() }
    public var all: [UInt8] { lock.lock(); defer { lock.unlock() }; return bytes }
}

/// Whether `needle` occurs in `haystack` (a token in the bytes on the wire, say).
public func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    return (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<($0 + needle.count)]) == needle }
}
