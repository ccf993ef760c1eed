import Checkpointing
import Foundation

/// What a checkpoint sink is built from: the `checkpoint:` section of a run's config
/// (`CheckpointSinkOptions(config:identity:)` in Training) or a command's options.
public struct CheckpointSinkOptions: Sendable {
    /// The directory sink's root: the run's `checkpoints/`.
    public var directory: URL
    /// `HOST:PORT` of the checkpoint service; empty: the directory.
    public var service: String
    /// Where `service` was given, for refusals (`checkpoint.service`, `--service`).
    public var serviceSetting: String
    /// The job token proved to the service.
    public var token: String
    /// Where the service sink downloads checkpoints (`run.dir/checkpoint-cache`).
    public var cacheDirectory: URL
    /// How a service client names itself in the handshake (the service logs it).
    public var identity: String
    /// Seconds: the directory sink's wait for the other ranks' parts; the service sink's I/O timeout.
    public var timeoutSeconds: Double
    public var retention: CheckpointRetention
    /// Seconds the service sink keeps retrying a part the service did not acknowledge.
    public var retrySeconds: Double

    public init(directory: URL, service: String = "", serviceSetting: String = "checkpoint.service",
                token: String = ProcessInfo.processInfo.environment["TESSERA_JOB_TOKEN"] ?? "", cacheDirectory: URL? = nil,
                identity: String = "checkpoint client", timeoutSeconds: Double = 300, retention: CheckpointRetention = CheckpointRetention(),
                retrySeconds: Double = 0) {
        self.directory = directory; self.service = service; self.serviceSetting = serviceSetting; self.token = token
        self.cacheDirectory = cacheDirectory ?? directory.deletingLastPathComponent().appendingPathComponent("checkpoint-cache")
        self.identity = identity; self.timeoutSeconds = timeoutSeconds; self.retention = retention; self.retrySeconds = retrySeconds
    }
}

extension CheckpointSinkOptions {
    /// A client of the service at `service` (a command's `--service`) that submits jobs:
    /// downloads, if any, into the temporary directory.
    public static func client(of service: String, identity: String, timeoutSeconds: Double = 60) -> CheckpointSinkOptions {
        let temporary = URL(fileURLWithPath: NSTemporaryDirectory())
        return CheckpointSinkOptions(directory: temporary, service: service, serviceSetting: "--service", cacheDirectory: temporary,
                                     identity: identity, timeoutSeconds: timeoutSeconds)
    }
}

/// The one place sinks are built (train, distill, soup and distill jobs sent to the service,
/// the checkpoint benchmarks): a directory sink, or the checkpoint service's client.
public enum CheckpointSinks {
    /// The sink `options` name: the service's client when `service` is set, else the directory.
    /// A bad address, or a missing or weak token, is one line naming the setting (`unusable`).
    public static func make(_ options: CheckpointSinkOptions) throws -> CheckpointSink {
        guard !options.service.isEmpty else {
            return DirectoryCheckpointSink(root: options.directory, timeoutSeconds: options.timeoutSeconds, retention: options.retention)
        }
        return try service(options)
    }

    /// The checkpoint service's client `options` name (also for submitting jobs to it).
    public static func service(_ options: CheckpointSinkOptions) throws -> ServiceCheckpointSink {
        do {
            return try ServiceCheckpointSink(address: ServiceAddress(options.service), token: options.token, cacheDirectory: options.cacheDirectory,
                                             identity: options.identity, ioTimeout: options.timeoutSeconds, retrySeconds: options.retrySeconds)
        } catch {
            throw CheckpointServiceError.unusable(setting: options.serviceSetting, value: options.service, reason: "\(error)")
        }
    }
}

extension ServiceCheckpointSink {
    public var location: String { "the checkpoint service at \(address)" }
    /// Its checkpoints are on the service's node (`fetch` downloads into a cache).
    public var directory: URL? { nil }

    /// Connects and proves the job token with one small request, so a missing service or a
    /// wrong token fails before the first step rather than at the first save.
    public func prepare(owner: Bool) throws -> [String] {
        _ = try list()
        return []
    }
}
