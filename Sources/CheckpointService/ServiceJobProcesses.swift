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
/// error go to `ROOT/jobs/job-TIME-N.log`, kept for the user (the service logs its path). A
/// child that outlives `timeoutSeconds` is terminated (SIGTERM, SIGKILL 5 s later); `stopAll`
/// does the same to every running child when the service stops.
public final class ServiceJobProcesses: @unchecked Sendable {
    public let command: [String]
    public let timeoutSeconds: Double
    private let lock = NSLock()
    private var running: [Int32: Process] = [:]
    private var stopped = false
    private var count = 0

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
        lock.lock()
        count += 1
        let name = "job-\(Int(Date().timeIntervalSince1970))-\(count)"
        lock.unlock()
        let requestURL = folder.appendingPathComponent(name + ".request.json")
        let resultURL = folder.appendingPathComponent(name + ".result.json")
        let logURL = folder.appendingPathComponent(name + ".log")
        defer { for url in [requestURL, resultURL] { try? FileManager.default.removeItem(at: url) } }
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try JSONEncoder().encode(request).write(to: requestURL)
            guard FileManager.default.createFile(atPath: logURL.path, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
        } catch {
            throw CheckpointServiceError.jobFailed(reason: "the service cannot write \(folder.path): \(error.localizedDescription)")
        }
        let output = try FileHandle(forWritingTo: logURL)
        defer { try? output.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst()) + ["--request", requestURL.path, "--result", resultURL.path]
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        lock.lock()
        guard !stopped else { lock.unlock(); throw CheckpointServiceError.jobFailed(reason: "the service is stopping") }
        do { try process.run() } catch {
            lock.unlock()
            throw CheckpointServiceError.jobFailed(reason: "cannot start \(command[0]): \(error.localizedDescription)")
        }
        running[process.processIdentifier] = process
        lock.unlock()
        log("job \(name) (\(request.kind)) runs as process \(process.processIdentifier); its output: \(logURL.path)")
        var timedOut = false
        if exited.wait(timeout: .now() + timeoutSeconds) == .timedOut {
            timedOut = true
            Self.end(process, exited)
        }
        lock.lock(); running[process.processIdentifier] = nil; lock.unlock()
        let what = "the \(request.kind) job (process \(process.processIdentifier))"
        if timedOut {
            throw CheckpointServiceError.jobFailed(reason: "\(what) ran past the service's --job-timeout of \(Int(timeoutSeconds)) s and was stopped; its output: \(logURL.path)")
        }
        if process.terminationReason == .exit, let outcome = Self.outcome(resultURL) {
            if let result = outcome.result, process.terminationStatus == 0 { return result }
            if let error = outcome.error { throw CheckpointServiceError.jobFailed(reason: error) }
        }
        let status = process.terminationReason == .uncaughtSignal
            ? "was killed by signal \(process.terminationStatus) (\(String(cString: strsignal(process.terminationStatus))))"
            : "exited with status \(process.terminationStatus) without a result"
        throw CheckpointServiceError.jobFailed(reason: "\(what) \(status); its output: \(logURL.path); the service goes on serving")
    }

    /// Terminates every running child (the service is stopping); later jobs are refused.
    public func stopAll() {
        lock.lock()
        stopped = true
        let children = Array(running.values)
        lock.unlock()
        for child in children where child.isRunning { child.terminate() }
    }

    /// SIGTERM, then SIGKILL when the child is still there 5 s later; waits for it to end.
    private static func end(_ process: Process, _ exited: DispatchSemaphore) {
        process.terminate()
        if exited.wait(timeout: .now() + 5) == .timedOut {
            kill(process.processIdentifier, SIGKILL)
            exited.wait()
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
