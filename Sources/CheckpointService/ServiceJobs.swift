import Checkpointing
import Foundation

/// A job a client submits to the checkpoint service, run on the service's node against the
/// checkpoints it holds (`tessera soup --service HOST:PORT ...`, `tessera distill --service
/// HOST:PORT ...`).
public struct ServiceJobRequest: Codable, Equatable, Sendable {
    /// What to run: `soup` or `distill`.
    public var kind: String
    /// The soup method: `uniform`, `weighted` or `greedy` (`mohawk` for a distillation).
    public var method: String
    /// Checkpoints on the service's node: a step held by the service (`8` or `step-00000008`),
    /// or a path there. A distillation's single input is its teacher.
    public var inputs: [String]
    /// A distillation's config (the YAML text of the client's distill config file) and its
    /// `--set` overrides; nil for soups (and for requests of clients before distill jobs).
    public var config: String?
    public var overrides: [String]?
    public var weights: [Double]
    /// Token shards on the service's node that score ingredients and soups (greedy).
    public var validationData: String?
    public var validationBatches: Int
    /// Name of the output run directory, created under the service's `soups/` (a soup) or
    /// `distills/` (a distillation).
    public var output: String

    public init(kind: String = "soup", method: String, inputs: [String], weights: [Double] = [], validationData: String? = nil,
                validationBatches: Int = 0, output: String, config: String? = nil, overrides: [String]? = nil) {
        self.kind = kind; self.method = method; self.inputs = inputs; self.weights = weights
        self.validationData = validationData; self.validationBatches = validationBatches; self.output = output
        self.config = config; self.overrides = overrides
    }

    /// The folder of the service's root that holds this kind of job's outputs.
    public var outputFolder: String { kind == "distill" ? "distills" : "soups" }
}

/// What a job produced: the checkpoint it wrote (a path on the service's node) and its log.
public struct ServiceJobResult: Codable, Equatable, Sendable {
    public var checkpoint: String
    public var log: [String]

    public init(checkpoint: String, log: [String]) { self.checkpoint = checkpoint; self.log = log }
}

extension ServiceJobRequest {
    /// The checkpoint directory an input names on a service rooted at `root`: a complete step
    /// it holds (`8`, `step-00000008`), or a path `paths` allows (a checkpoint, or a run
    /// directory: its newest complete checkpoint; by default only under the root). A path
    /// outside is refused before anything looks at it (`pathNotAllowed`).
    public func resolve(_ input: String, root: URL, paths: ServicePaths? = nil) throws -> URL {
        guard input.utf8.count <= ServiceLimits.maxPathBytes, !input.utf8.contains(0) else {
            throw CheckpointServiceError.invalidPart(reason: "a job input of \(input.utf8.count) bytes (or with a NUL byte); the limit is \(ServiceLimits.maxPathBytes)")
        }
        let step = Int(input) ?? CheckpointLayout.step(ofDirectory: input)
        if let step { try ServiceLimits.check("step", step, in: 0...CheckpointLayout.maxStep, "a job input") }
        var url = try step.map { root.appendingPathComponent(CheckpointLayout.directoryName(step: $0)) }
            ?? (paths ?? ServicePaths(root: root)).check(input, what: "the job input")
        if step == nil, !FileManager.default.fileExists(atPath: url.appendingPathComponent(CheckpointLayout.done).path),
           let newest = CheckpointStore(root: url.appendingPathComponent("checkpoints")).latest() {
            url = newest
        }
        guard FileManager.default.fileExists(atPath: url.appendingPathComponent(CheckpointLayout.done).path) else {
            let have = CheckpointStore(root: root).complete().map { String($0.step) }
            throw CheckpointError.missing(path: url.path, hint: "not a complete checkpoint on the service; its complete steps: \(have.isEmpty ? "none" : have.joined(separator: ", "))")
        }
        return url
    }

    /// The output run directory: `root/soups/NAME` or `root/distills/NAME` (a plain name, no slashes).
    public func outputDirectory(root: URL) throws -> URL {
        guard !output.isEmpty, !output.contains("/"), output != ".", output != ".." else {
            throw CheckpointError.writeFailed(path: output, reason: "a job's --output is a plain name; the service writes it under its root's \(outputFolder)/")
        }
        return root.appendingPathComponent(outputFolder).appendingPathComponent(output)
    }
}

extension CheckpointServer {
    /// Runs a submitted job in a child process (`jobs`), waiting on this connection's thread,
    /// and answers with its result; a failed or crashed job is refused with one line and the
    /// service goes on. A service started without `jobs` refuses jobs.
    func runJob(_ frame: Frame, on connection: ServiceConnection, client: String) throws {
        guard let request = try? JSONDecoder().decode(ServiceJobRequest.self, from: Data(frame.payload)) else {
            throw CheckpointServiceError.badFrame(address: connection.address, reason: "a job request that is not JSON")
        }
        guard let jobs else {
            throw CheckpointServiceError.rejected(address: connection.address, reason: "this service runs no jobs")
        }
        guard ["soup", "distill"].contains(request.kind) else {
            throw CheckpointServiceError.jobFailed(reason: "unknown job kind '\(request.kind.prefix(64))'; the service runs soup and distill jobs")
        }
        log("job from '\(client)': \(request.kind) \(request.method) of \(request.inputs.joined(separator: ", ")) → \(request.outputFolder)/\(request.output)")
        let result = try jobs.run(request, root: root, log: log)
        log("job done: \(result.checkpoint)")
        try connection.send(.ok, json: result, while: "answering a job")
    }
}

extension ServiceCheckpointSink {
    /// Submits a job to the service and waits for its result. Connecting, the handshake and
    /// the submission are bounded by the sink's I/O timeout; the wait for the result (soups and
    /// distillations take minutes) by `replyTimeout` seconds.
    public func submit(_ request: ServiceJobRequest, replyTimeout: Double) throws -> ServiceJobResult {
        let connection = try connect()
        try connection.send(.job, json: request, while: "submitting a \(request.kind) job")
        let waiting = connection.duplicate(timeout: replyTimeout)
        return try reply(waiting, ServiceJobResult.self, while: "waiting for the \(request.kind) job to finish")
    }
}
