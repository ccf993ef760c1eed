import ArgumentParser
import CheckpointService
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `tessera ckpt job` (hidden): one soup or distill job of the checkpoint service, in the child
/// process the service starts for it (`ServiceJobProcesses`), confined like the service to
/// `--root` and its `--allow-path` directories. Writes a `ServiceJobOutcome` to `--result`; its
/// output (the service keeps it in ROOT/jobs/) is the job's progress. Ends when the service does.
struct CheckpointJob: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job", abstract: "Run one job of the checkpoint service (started by tessera ckpt serve).", shouldDisplay: false)

    @Option(help: "The service's root.")
    var root: String

    @Option(help: "A directory besides --root that the job may read; repeat for more.")
    var allowPath: [String] = []

    @Option(help: "The job's request (JSON).")
    var request: String

    @Option(help: "Where to write the job's outcome (JSON).")
    var result: String

    func run() throws {
        Self.endWithParent()
        let outcome: ServiceJobOutcome
        do {
            outcome = ServiceJobOutcome(result: try runJob())
        } catch {
            outcome = ServiceJobOutcome(error: "\(error)")
        }
        try JSONEncoder().encode(outcome).write(to: URL(fileURLWithPath: result))
        if let error = outcome.error {
            try? FileHandle.standardError.write(contentsOf: Data("tessera: job: error: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    private func runJob() throws -> ServiceJobResult {
        let size = (try? FileManager.default.attributesOfItem(atPath: request))?[.size] as? Int ?? Int.max
        guard size <= ServiceLimits.maxJobResultBytes, let data = FileManager.default.contents(atPath: request),
              let job = try? JSONDecoder().decode(ServiceJobRequest.self, from: data) else {
            throw ValidationError("\(request) is not a job request of at most \(ServiceLimits.maxJobResultBytes) bytes")
        }
        switch ProcessInfo.processInfo.environment[ServiceJobProcesses.crashForTests] {
        case "trap"?: fatalError("\(ServiceJobProcesses.crashForTests)=trap")
        case "kill"?: kill(getpid(), SIGKILL)
        default: break
        }
        let paths = ServicePaths(root: URL(fileURLWithPath: root), allowing: allowPath)
        // Soups and distillations need training, which lives above the service's module.
        let runner = job.kind == "distill" ? Distill.runServiceJob : Soup.runServiceJob
        var lines: [String] = []
        let done = try runner(job, URL(fileURLWithPath: root), paths) { line in
            print(line)
            lines.append(line)
        }
        return ServiceJobResult(checkpoint: done.checkpoint, log: lines + done.log)
    }

    /// Ends this process (status 143) once its parent, the service, is gone, even killed with
    /// SIGKILL: a job never outlives the service that would answer for it.
    static func endWithParent() {
        let parent = getppid()
        let thread = Thread {
            while getppid() == parent { usleep(500_000) }
            try? FileHandle.standardError.write(contentsOf: Data("tessera: job: the checkpoint service (process \(parent)) is gone; the job stops\n".utf8))
            _exit(143)
        }
        thread.name = "tessera-job-parent"
        thread.start()
    }
}
