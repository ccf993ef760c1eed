import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs each job the checkpoint service accepts as a child process, so a job that crashes
/// (a trap, a kill, running out of memory) fails alone and the service goes on serving.
///
/// The child is `command` (for `tessera ckpt serve`: this executable's `ckpt job --root ROOT
/// --allow-path ...`) followed by `--request FILE --result FILE`: it reads the request (JSON),
/// runs it, and writes a `ServiceJobOutcome` (JSON) to the result file. Its standard output and
/// error go to `ROOT/jobs/job-TIME-PID-N.log`, kept for the user (the service logs its path). A
/// child that outlives `timeoutSeconds` is terminated (SIGTERM, SIGKILL 5 s later); `stopAll`
/// does the same to every running child when the service stops.
public final class ServiceJobProcesses: @unchecked Sendable {
    public let command: [String]
    public let timeoutSeconds: Double
    private let lock = NSLock()
    private var running: Set<pid_t> = []
    private var stopped = false
    /// Jobs started by this process, for the logs' names.
    private static let counter = NSLock()
    private static var count = 0

    public init(command: [String], timeoutSeconds: Double) {
        self.command = command; self.timeoutSeconds = timeoutSeconds
    }

    /// The folder of the service's root that holds the jobs' logs.
    public static let folder = "jobs"
    /// The environment variable a child (`tessera ckpt job`) reads to crash on purpose, for
    /// tests only: `trap` or `kill`.
    public static let crashForTests = "TESSERA_TEST_JOB_CRASH"

    /// Runs `request` in a child and returns its result; `log` is told where its output goes.
    /// A child that fails with an error answers with it; one that crashes, exits without an
    /// answer or runs out of time is `jobFailed` naming its exit status or signal and its log.
    func run(_ request: ServiceJobRequest, root: URL, log: (String) -> Void) throws -> ServiceJobResult {
        let folder = root.appendingPathComponent(Self.folder)
        Self.counter.lock()
        Self.count += 1
        let name = "job-\(Int(Date().timeIntervalSince1970))-\(getpid())-\(Self.count)"
        Self.counter.unlock()
        let requestURL = folder.appendingPathComponent(name + ".request.json")
        let resultURL = folder.appendingPathComponent(name + ".result.json")
        let logURL = folder.appendingPathComponent(name + ".log")
        defer { for url in [requestURL, resultURL] { try? FileManager.default.removeItem(at: url) } }
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try JSONEncoder().encode(request).write(to: requestURL)
            guard FileManager.default.createFile(atPath: logURL.path, contents: nil) else { throw CocoaError(.fileWriteNoPermission) }
        } catch {
            throw CheckpointServiceError.jobFailed(reason: "the service cannot write \(folder.path): \(error.localizedDescription)")
        }
        lock.lock()
        guard !stopped else { lock.unlock(); throw CheckpointServiceError.jobFailed(reason: "the service is stopping") }
        let pid: pid_t
        do { pid = try Self.spawn(command + ["--request", requestURL.path, "--result", resultURL.path], output: logURL) } catch {
            lock.unlock()
            throw error
        }
        running.insert(pid)
        lock.unlock()
        log("job \(name) (\(request.kind)) runs as process \(pid); its output: \(logURL.path)")
        var status = Self.wait(pid, seconds: timeoutSeconds)
        let timedOut = status == nil
        if timedOut {
            kill(pid, SIGTERM)
            status = Self.wait(pid, seconds: 5)
            if status == nil { kill(pid, SIGKILL); status = Self.wait(pid, seconds: .infinity) }
        }
        lock.lock(); running.remove(pid); lock.unlock()
        let what = "the \(request.kind) job (process \(pid))"
        if timedOut {
            throw CheckpointServiceError.jobFailed(reason: "\(what) ran past the service's --job-timeout of \(Int(timeoutSeconds)) s and was stopped; its output: \(logURL.path)")
        }
        let ended = status ?? -1
        let signal = ended & 0x7f, code = (ended >> 8) & 0xff
        if signal == 0, let outcome = Self.outcome(resultURL) {
            if let result = outcome.result, code == 0 { return result }
            if let error = outcome.error { throw CheckpointServiceError.jobFailed(reason: error) }
        }
        let how = signal != 0 ? "was killed by signal \(signal) (\(String(cString: strsignal(signal))))" : "exited with status \(code) without a result"
        throw CheckpointServiceError.jobFailed(reason: "\(what) \(how); its output: \(logURL.path); the service goes on serving")
    }

    /// Terminates every running child (SIGTERM; the service is stopping); later jobs are refused.
    public func stopAll() {
        lock.lock()
        stopped = true
        let children = running
        lock.unlock()
        for pid in children { kill(pid, SIGTERM) }
    }

    /// Starts `arguments` (the executable first) with standard output and error appended to
    /// `output` and standard input from /dev/null. (posix_spawn and waitpid, not Foundation's
    /// Process: its exit notification needs a main run loop the service does not run.)
    static func spawn(_ arguments: [String], output: URL) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output.path, O_WRONLY | O_APPEND, 0)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let failed = posix_spawn(&pid, arguments[0], &actions, nil, argv, environ)
        guard failed == 0 else {
            throw CheckpointServiceError.jobFailed(reason: "the service cannot start \(arguments[0]): \(String(cString: strerror(failed)))")
        }
        return pid
    }

    /// The wait status of `pid` once it ends, or nil after `seconds`.
    static func wait(_ pid: pid_t, seconds: Double) -> Int32? {
        let end = Date(timeIntervalSinceNow: min(seconds, 1e9))
        var status: Int32 = 0
        while true {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { return status }
            if reaped < 0, errno != EINTR { return status }
            if Date() >= end { return nil }
            usleep(20_000)
        }
    }

    /// The child's answer, read with a bound (`ServiceLimits.maxJobResultBytes`); nil when
    /// there is none or it is not one.
    static func outcome(_ url: URL) -> ServiceJobOutcome? {
        guard let size = (try? FileManager.default.attributesOfItem(atPath: url.path))?[.size] as? Int,
              size <= ServiceLimits.maxJobResultBytes, let data = FileManager.default.contents(atPath: url.path) else { return nil }
        return try? JSONDecoder().decode(ServiceJobOutcome.self, from: data)
    }
}

/// What a job's child process writes to its result file: the result, or the one-line error.
public struct ServiceJobOutcome: Codable, Equatable, Sendable {
    public var result: ServiceJobResult?
    public var error: String?

    public init(result: ServiceJobResult? = nil, error: String? = nil) { self.result = result; self.error = error }
}
