import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The process holding a run directory, as its lock file records it.
public struct RunDirectoryHolder: Equatable, Sendable {
    public var host: String
    public var pid: Int32
    /// When it took the lock (ISO 8601, UTC).
    public var started: String
    /// The holder host's boot (`/proc/sys/kernel/random/boot_id`): a different boot means the
    /// holder is gone whatever its pid.
    public var bootID: String?
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot): another start time means the pid
    /// now belongs to another process.
    public var processStart: UInt64?

    public init(host: String, pid: Int32, started: String, bootID: String? = nil, processStart: UInt64? = nil) {
        self.host = host; self.pid = pid; self.started = started; self.bootID = bootID; self.processStart = processStart
    }

    /// This process.
    public static func current() -> RunDirectoryHolder {
        let pid = getpid()
        let formatter = ISO8601DateFormatter()
        return RunDirectoryHolder(host: RunDirectoryLock.hostName(), pid: pid, started: formatter.string(from: Date()),
                                  bootID: RunDirectoryLock.bootID(), processStart: RunDirectoryLock.processStart(pid))
    }

    /// The lock file's text: one `key=value` per line.
    var text: String {
        var lines = ["host=\(host)", "pid=\(pid)", "started=\(started)"]
        if let bootID { lines.append("boot_id=\(bootID)") }
        if let processStart { lines.append("process_start=\(processStart)") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Parses a lock file's text; nil when host or pid is missing (a file still being written).
    init?(text: String) {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        guard let host = fields["host"], !host.isEmpty, let pid = fields["pid"].flatMap(Int32.init), pid > 0 else { return nil }
        self.init(host: host, pid: pid, started: fields["started"] ?? "an unknown time", bootID: fields["boot_id"],
                  processStart: fields["process_start"].flatMap(UInt64.init))
    }

    var summary: String { "pid \(pid) on host \(host), started \(started)" }
}

/// Why a run directory cannot be held; each description is one line saying what to do.
public enum RunDirectoryLockError: Error, Equatable, CustomStringConvertible {
    /// A live process on this host holds it.
    case held(runDirectory: String, holder: RunDirectoryHolder)
    /// A process on another host holds it: never taken over, this host cannot tell whether it lives.
    case heldElsewhere(runDirectory: String, lockFile: String, holder: RunDirectoryHolder)
    /// The lock file exists but does not name a holder.
    case unreadable(lockFile: String, reason: String)
    /// The lock file cannot be created (or the directory).
    case cannotCreate(lockFile: String, reason: String)

    public var description: String {
        switch self {
        case let .held(runDirectory, holder):
            return "run.dir \(runDirectory) is in use by another tessera run (\(holder.summary)); wait for it to end or stop it, or choose another run.dir (--set run.dir=NEW)"
        case let .heldElsewhere(runDirectory, lockFile, holder):
            return "run.dir \(runDirectory) is in use by a tessera run on another host (\(holder.summary)), which this host cannot check; if that run is gone, remove \(lockFile), or choose another run.dir (--set run.dir=NEW)"
        case let .unreadable(lockFile, reason):
            return "run.dir lock \(lockFile) names no holder (\(reason)); if no run is using the directory, remove it"
        case let .cannotCreate(lockFile, reason):
            return "cannot create the run.dir lock \(lockFile): \(reason)"
        }
    }
}

/// A run's hold on its run directory: the file `RUN_DIR/.tessera.lock`, created exclusively
/// (`O_CREAT | O_EXCL`), naming the holder's host, pid and start time. Released by `release()`
/// (or when the lock is deallocated). A lock whose holder is gone (same host, and `kill(pid, 0)`
/// fails with ESRCH, or the pid is a zombie, or now belongs to a process started later, or the host has rebooted)
/// is taken over; a holder on another host never is.
public final class RunDirectoryLock {
    public static let fileName = ".tessera.lock"

    public let path: String
    public let holder: RunDirectoryHolder
    /// The stale holder this lock replaced, if any.
    public let tookOverFrom: RunDirectoryHolder?
    /// The lock file's identity, so that `release` removes this lock's file and no other.
    public let device: UInt64
    public let inode: UInt64
    private var released = false

    private init(path: String, holder: RunDirectoryHolder, tookOverFrom: RunDirectoryHolder?, device: UInt64, inode: UInt64) {
        self.path = path; self.holder = holder; self.tookOverFrom = tookOverFrom; self.device = device; self.inode = inode
    }

    deinit { release() }

    /// Takes `runDirectory` (creating it when missing) for this process.
    public static func acquire(runDirectory: URL) throws -> RunDirectoryLock {
        let me = RunDirectoryHolder.current()
        let path = runDirectory.appendingPathComponent(fileName).path
        do {
            try FileManager.default.createDirectory(at: runDirectory, withIntermediateDirectories: true)
        } catch {
            throw RunDirectoryLockError.cannotCreate(lockFile: path, reason: error.localizedDescription)
        }
        var replaced: RunDirectoryHolder?
        for _ in 0..<8 {   // retried only when another process removes or replaces the file meanwhile
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if fd >= 0 {
                let bytes = Array(me.text.utf8)
                let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                var status = stat()
                let statted = fstat(fd, &status) == 0
                close(fd)
                guard written == bytes.count, statted else {
                    let reason = String(cString: strerror(errno))
                    unlink(path)
                    throw RunDirectoryLockError.cannotCreate(lockFile: path, reason: reason)
                }
                return RunDirectoryLock(path: path, holder: me, tookOverFrom: replaced,
                                        device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
            }
            guard errno == EEXIST else {
                throw RunDirectoryLockError.cannotCreate(lockFile: path, reason: String(cString: strerror(errno)))
            }
            guard let (holder, identity) = try readHolder(path) else { continue }   // removed meanwhile
            if holder.host != me.host {
                throw RunDirectoryLockError.heldElsewhere(runDirectory: runDirectory.path, lockFile: path, holder: holder)
            }
            if isAlive(holder) { throw RunDirectoryLockError.held(runDirectory: runDirectory.path, holder: holder) }
            if removeStale(path, identity: identity) { replaced = holder }
        }
        throw RunDirectoryLockError.cannotCreate(lockFile: path, reason: "other processes keep replacing it")
    }

    /// Removes the lock file if it is still this lock's (someone may have removed a lock by hand
    /// and started another run). Safe to call more than once.
    public func release() {
        guard !released else { return }
        released = true
        var status = stat()
        if stat(path, &status) == 0, UInt64(status.st_dev) == device, UInt64(status.st_ino) == inode { unlink(path) }
    }

    // MARK: Holders

    /// The holder named by the lock file and the file's identity; nil when the file is gone. A
    /// file without a holder is waited for briefly (its creator writes it right after creating
    /// it), then reported.
    static func readHolder(_ path: String) throws -> (RunDirectoryHolder, (UInt64, UInt64))? {
        var text = ""
        for attempt in 0..<20 {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd < 0 {
                if errno == ENOENT { return nil }
                throw RunDirectoryLockError.unreadable(lockFile: path, reason: String(cString: strerror(errno)))
            }
            var status = stat()
            fstat(fd, &status)
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            close(fd)
            text = count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : ""
            if let holder = RunDirectoryHolder(text: text) { return (holder, (UInt64(status.st_dev), UInt64(status.st_ino))) }
            if attempt < 19 { usleep(50_000) }
        }
        throw RunDirectoryLockError.unreadable(lockFile: path, reason: text.isEmpty ? "it is empty" : "it does not name a host and pid")
    }

    /// Whether `holder` (on this host) may still be running.
    static func isAlive(_ holder: RunDirectoryHolder) -> Bool {
        if let theirs = holder.bootID, let ours = bootID(), theirs != ours { return false }   // the host rebooted since
        if kill(holder.pid, 0) != 0 && errno == ESRCH { return false }
        // A zombie (killed, not yet reaped: a rank whose mpirun exited first) holds nothing.
        if let state = processState(holder.pid), state == "Z" || state == "X" { return false }
        if let recorded = holder.processStart, let now = processStart(holder.pid), recorded != now { return false }   // pid reused
        return true
    }

    /// Removes the stale lock file with `identity`, and only that one: it is first renamed aside
    /// (atomic: of several processes taking over at once one succeeds), then checked. Returns
    /// false when another process got there first.
    static func removeStale(_ path: String, identity: (UInt64, UInt64)) -> Bool {
        let aside = path + ".stale-\(getpid())"
        guard rename(path, aside) == 0 else { return false }
        var status = stat()
        if stat(aside, &status) == 0, (UInt64(status.st_dev), UInt64(status.st_ino)) == identity {
            unlink(aside)
            return true
        }
        // Another process replaced the stale file between our read and the rename: put its back.
        _ = link(aside, path)   // (fails if a third process has created one meanwhile: theirs stands)
        unlink(aside)
        return false
    }

    // MARK: This host

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(cString: buffer)
    }

    static func bootID() -> String? {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Start time of process `pid` (field 22 of /proc/PID/stat), nil when unreadable.
    static func processStart(_ pid: Int32) -> UInt64? {
        guard let fields = statFields(pid) else { return nil }
        // After the name: field 3 (state) is fields[0], so field 22 is fields[19].
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }

    /// State of process `pid` (field 3 of /proc/PID/stat: R, S, D, Z for a zombie...), nil when unreadable.
    static func processState(_ pid: Int32) -> Character? { statFields(pid)?.first?.first }

    /// The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses).
    private static func statFields(_ pid: Int32) -> [Substring]? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let nameEnd = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: nameEnd)...].split(separator: " ")
    }
}
