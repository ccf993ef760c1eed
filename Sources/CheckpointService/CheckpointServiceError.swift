/// Why talking to the checkpoint service failed; every case names the service's (or, in the
/// service's log, the client's) address and what to do.
public enum CheckpointServiceError: Error, Equatable, CustomStringConvertible {
    case invalidAddress(String)
    case missingToken(hint: String)
    /// A job token too short or too plain to keep strangers out (`JobToken.validate`).
    case weakToken(reason: String)
    case unreachable(address: String, reason: String)
    case authenticationFailed(address: String, reason: String)
    case timedOut(address: String, waitingFor: String, seconds: Double)
    case connectionLost(address: String, reason: String)
    /// A frame failed its CRC-32, was too long, or was not expected here.
    case badFrame(address: String, reason: String)
    /// The service answered the request with an error.
    case rejected(address: String, reason: String)
    case corruptDownload(address: String, file: String, reason: String)
    case invalidPart(reason: String)
    /// A part still not acknowledged after `seconds` of retries.
    case notDelivered(address: String, step: Int, seconds: Double, lastError: String)
    /// A job named a path outside the service's root and its `--allow-path` directories.
    case pathNotAllowed(what: String, path: String)
    /// A sink that cannot be built from `setting` (`CheckpointSinks`).
    case unusable(setting: String, value: String, reason: String)
    /// A job failed: its own error, or how its process ended (`ServiceJobProcesses`).
    case jobFailed(reason: String)

    /// Whether trying again may succeed: the service was out of reach, dropped the connection
    /// or stalled (a restart, an outage), or was busy serving its most clients at once; other
    /// refusals and failed handshakes are final.
    public var isTransient: Bool {
        switch self {
        case .unreachable, .connectionLost, .timedOut, .badFrame: return true
        case let .rejected(_, reason): return reason.hasPrefix(CheckpointServer.busyPrefix)
        default: return false
        }
    }

    public var description: String {
        switch self {
        case let .invalidAddress(text):
            return "'\(text)' is not a checkpoint service address; write HOST:PORT, e.g. 10.0.0.5:29600"
        case let .missingToken(hint):
            return "no job token for the checkpoint service: \(hint)"
        case let .weakToken(reason):
            return reason
        case let .unreachable(address, reason):
            return "checkpoint service at \(address) is unreachable: \(reason)"
        case let .authenticationFailed(address, reason):
            return "checkpoint service at \(address): handshake failed: \(reason); give both sides the same TESSERA_JOB_TOKEN (or --token-file)"
        case let .timedOut(address, waitingFor, seconds):
            return "checkpoint service at \(address): no progress for \(String(format: "%g", seconds)) s while \(waitingFor); is the network or the service stuck?"
        case let .connectionLost(address, reason):
            return "checkpoint service at \(address): connection lost (\(reason)); the part was not acknowledged, deliver it again"
        case let .badFrame(address, reason):
            return "checkpoint service at \(address): bad frame: \(reason)"
        case let .rejected(address, reason):
            return "checkpoint service at \(address) refused the request: \(reason)"
        case let .corruptDownload(address, file, reason):
            return "checkpoint service at \(address): downloaded \(file) is corrupt (\(reason)); nothing was kept, fetch it again"
        case let .pathNotAllowed(what, path):
            return "\(what) \(path) is not under the service's root or a directory it was started with --allow-path; jobs read only there"
        case let .notDelivered(address, step, seconds, lastError):
            return "checkpoint service at \(address): step \(step) was not delivered in \(String(format: "%g", seconds)) s of retries (last: \(lastError)); start the service again, or raise checkpoint.service_retry_seconds"
        case let .jobFailed(reason):
            return reason
        case let .unusable(setting, value, reason):
            return "\(setting) = \(value): \(reason)"
        case let .invalidPart(reason):
            return "checkpoint part refused: \(reason)"
        }
    }
}
