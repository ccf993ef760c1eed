import ArgumentParser
import CheckpointService
import Checkpointing
import Foundation

/// `tessera ckpt`: the checkpoint service's commands (the lead merges these with
/// `list|show|verify`).
/// `tessera ckpt serve`: the long-running checkpoint service.
struct CheckpointServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Receive checkpoints from training ranks over TCP, commit them, serve them back.",
        discussion: """
            Clients prove the job token (TESSERA_JOB_TOKEN, or --token-file) with a challenge-response; \
            the token never travels. A step is committed under ROOT/step-NNNNNNNN once every rank's part \
            arrived and verified (checksums.json, DONE last). Soup and distill jobs (tessera soup/distill \
            --service) each run as a child process, their output kept in ROOT/jobs/; a job that crashes is \
            reported to its client and the service goes on. Runs until killed; a restart carries on.
            """)

    @Option(help: "Directory holding the checkpoints (created if missing).")
    var root: String

    @Option(help: "HOST:PORT to listen on, e.g. 0.0.0.0:29600.")
    var listen: String

    @Option(help: "File holding the job token (instead of TESSERA_JOB_TOKEN).")
    var tokenFile: String?

    @Option(help: "Keep the newest K complete checkpoints (at least 1: the newest is never deleted).")
    var keep = 3

    @Option(help: "Also keep the K with the lowest validation loss.")
    var keepBest = 1

    @Option(help: "Seconds without progress after which a client's connection is dropped.")
    var ioTimeout = 60.0

    @Option(help: "Clients that proved the token served at once; one more is refused (\"busy\") and a training rank retries it.")
    var maxClients = CheckpointServer.defaultMaxClients

    @Option(help: "A directory (besides --root) whose teachers, checkpoints and token data soup and distill jobs may read; repeat for more.")
    var allowPath: [String] = []

    @Option(help: ArgumentHelp("Seconds a soup or distill job may run before it is stopped. Each job runs as a child process; its output is kept in ROOT/jobs/.", valueName: "SECONDS"))
    var jobTimeout = 24 * 3600.0

    func validate() throws {
        guard keep >= 1 else { throw ValidationError("--keep \(keep) must be at least 1 (the newest checkpoint is always kept)") }
        guard keepBest >= 0 else { throw ValidationError("--keep-best \(keepBest) must be 0 or more") }
        guard ioTimeout > 0 else { throw ValidationError("--io-timeout \(ioTimeout) must be positive") }
        guard jobTimeout > 0 else { throw ValidationError("--job-timeout \(jobTimeout) must be positive") }
        guard maxClients >= 1 else { throw ValidationError("--max-clients \(maxClients) must be at least 1") }
    }

    func run() throws {
        let address = try ServiceAddress(listen)
        let token = try Self.jobToken(file: tokenFile)
        let server = CheckpointServer(root: URL(fileURLWithPath: root), token: token, host: address.host, port: address.port,
                                      retention: CheckpointRetention(keepLast: keep, keepBest: keepBest), ioTimeout: ioTimeout,
                                      maxClients: maxClients)
        // Each job is this executable's `ckpt job` in a child process, confined like the service.
        let executable = FileManager.default.fileExists(atPath: "/proc/self/exe")
            ? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path : Bundle.main.executablePath ?? CommandLine.arguments[0]
        let root = URL(fileURLWithPath: root).standardizedFileURL.path
        server.jobs = ServiceJobProcesses(command: [executable, "ckpt", "job", "--root", root] + allowPath.flatMap { ["--allow-path", $0] },
                                          timeoutSeconds: jobTimeout)
        do {
            try server.start()
        } catch let CheckpointServiceError.unreachable(_, reason) where reason.contains("cannot listen") {
            // The socket layer's hint is the training rendezvous's (TESSERA_MASTER_PORT): this is --listen.
            let cause = reason.range(of: #"cannot listen on [^ ]+: ([^;)]+)"#, options: .regularExpression)
                .map { String(reason[$0]).components(separatedBy: ": ").dropFirst().joined(separator: ": ") } ?? reason
            throw CommandLineError.serviceCannotListen(listen: listen, cause: cause)
        }
        server.wait()
    }

    /// The job token from `--token-file` (its first line) or TESSERA_JOB_TOKEN; none is an error.
    static func jobToken(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw CheckpointServiceError.missingToken(hint: "--token-file \(file) cannot be read")
            }
            let token = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
            guard !token.isEmpty else { throw CheckpointServiceError.missingToken(hint: "--token-file \(file) is empty") }
            return token
        }
        guard let token = environment["TESSERA_JOB_TOKEN"], !token.isEmpty else {
            throw CheckpointServiceError.missingToken(hint: "export TESSERA_JOB_TOKEN (the training job's token) or pass --token-file")
        }
        return token
    }
}
