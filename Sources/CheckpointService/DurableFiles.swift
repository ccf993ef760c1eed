import Checkpointing
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writing files so that they survive a crash: data fsynced before the file is renamed or
/// announced, directories fsynced after entries change. Errors are `CheckpointError.writeFailed`
/// naming the path.
enum DurableFiles {
    static func failure(_ url: URL, _ what: String) -> CheckpointError {
        .writeFailed(path: url.path, reason: "\(what): \(String(cString: strerror(errno)))")
    }

    /// A new (or truncated) file open for writing.
    static func create(_ url: URL) throws -> Int32 {
        let fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw failure(url, "open") }
        return fd
    }

    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, to url: URL) throws {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw failure(url, "write") }
            offset += n
        }
    }

    /// Starts writing `count` bytes of `fd` from `offset` to the disk without waiting
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a file arriving over the network is
    /// mostly on disk by its `finish`, whose fsync then waits for little; nothing where the C
    /// library lacks the call. Durability still comes from `finish` alone.
    static func startWriteback(_ fd: Int32, offset: Int, count: Int) {
        _ = syncFileRange?(fd, Int64(offset), Int64(count), 2 /* SYNC_FILE_RANGE_WRITE */)
    }

    /// Bytes written between two `startWriteback` calls of a file being received.
    static let writebackBytes = 8 << 20

    private typealias SyncFileRange = @convention(c) (Int32, Int64, Int64, UInt32) -> Int32
    /// glibc's `sync_file_range` (declared only under `_GNU_SOURCE`, so Swift's Glibc module lacks it).
    private static let syncFileRange: SyncFileRange? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sync_file_range")
        .map { unsafeBitCast($0, to: SyncFileRange.self) }

    /// fsyncs and closes `fd` (closed even when fsync fails).
    static func finish(_ fd: Int32, _ url: URL) throws {
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw failure(url, "fsync") }
    }

    /// Writes `data` to `url` and fsyncs it.
    static func write(_ data: Data, to url: URL) throws {
        let fd = try create(url)
        do { try data.withUnsafeBytes { try write(fd, $0, to: url) } } catch { close(fd); throw error }
        try finish(fd, url)
    }

    /// Replaces `url` atomically: a temporary next to it, fsynced, renamed, the directory fsynced.
    static func replace(_ url: URL, with data: Data) throws {
        let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp")
        try write(data, to: temporary)
        try rename(temporary, to: url)
    }

    static func rename(_ from: URL, to: URL) throws {
        guard Glibc.rename(from.path, to.path) == 0 else { throw failure(to, "rename from \(from.lastPathComponent)") }
        try syncDirectory(to.deletingLastPathComponent())
    }

    static func syncDirectory(_ url: URL) throws {
        let fd = open(url.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw failure(url, "open directory") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw failure(url, "fsync directory") }
    }
}
