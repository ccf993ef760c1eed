import Checkpointing
import Crypto
import Foundation
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// A rank's destination for checkpoint parts when training streams to the checkpoint service
/// (`checkpoint.service: HOST:PORT`). Each call opens one connection, proves the job token
/// (`JobHandshake`), makes its request and closes. Blocking: call it from a dedicated thread
/// (the checkpoint writer), never from the concurrency pool. Every error names the service's
/// address.
public final class ServiceCheckpointSink: CheckpointSink {
    public let address: ServiceAddress
    /// Where `fetch(step:)` puts downloaded checkpoints (`step-NNNNNNNN/` inside).
    public let cacheDirectory: URL
    /// Seconds to keep trying to connect (the service may be starting).
    public let connectTimeout: Double
    /// Seconds without progress after which a request fails.
    public let ioTimeout: Double
    /// How this client names itself in the handshake (the service logs it).
    public let identity: String
    private let token: String

    /// Seconds `deliver` keeps retrying a part the service did not acknowledge (out of reach,
    /// connection lost, timed out: a restart or an outage) before it throws `notDelivered`;
    /// 0: the first failure throws. Refusals are never retried.
    public let retrySeconds: Double
    /// Where `deliver` says that it retries (default: standard error).
    public var note: (String) -> Void = { try? FileHandle.standardError.write(contentsOf: Data("tessera: \($0)\n".utf8)) }
    /// The first wait between attempts; each failure doubles it, up to `maxRetryWait`.
    public static let firstRetryWait = 0.5
    /// The longest wait between attempts: a restarted service is found within this.
    public static let maxRetryWait = 10.0

    public init(address: ServiceAddress, token: String, cacheDirectory: URL, identity: String = "checkpoint client",
                connectTimeout: Double = 10, ioTimeout: Double = 120, retrySeconds: Double = 0) throws {
        guard !token.isEmpty else { throw CheckpointServiceError.missingToken(hint: "set TESSERA_JOB_TOKEN to the service's token") }
        do { try JobToken.validate(token, source: "TESSERA_JOB_TOKEN") } catch {
            throw CheckpointServiceError.weakToken(reason: "\(error)")
        }
        self.address = address; self.token = token; self.cacheDirectory = cacheDirectory
        self.identity = identity; self.connectTimeout = connectTimeout; self.ioTimeout = ioTimeout
        self.retrySeconds = retrySeconds
    }

    /// Uploads the part; returns once the service has written and fsynced it (and, when it was
    /// the last part of its step, committed the step). The receipt says which.
    @discardableResult
    public func upload(_ part: CheckpointPart) throws -> PartReceipt {
        // Each file's bytes go out as they are, sealed frame after sealed frame; its `fileEnd`
        // frame leaves the SHA-256 to the service, which hashes what arrived: every frame's
        // AES-GCM tag and counter nonce already prove the bytes are these, in this order, none
        // missing, so a sum computed here would prove nothing more and cost a pass over the part.
        let header = PartHeader(step: part.step, rank: part.rank, ranks: part.ranks,
                                files: part.files.map { PartFileEntry(name: $0.name, size: $0.data.count, sha256: "") })
        try header.validate(sumsFollow: true)
        let connection = try connect()
        let what = "step \(part.step) rank \(part.rank)"
        do {
            try connection.send(.putPart, json: header, while: "sending \(what)'s part")
            for file in part.files {
                try file.data.withUnsafeBytes { bytes in
                    for offset in stride(from: 0, to: bytes.count, by: Frame.chunkBytes) {
                        let chunk = UnsafeRawBufferPointer(rebasing: bytes[offset..<min(bytes.count, offset + Frame.chunkBytes)])
                        try connection.send(.fileData, chunk, while: "sending \(file.name) of \(what)")
                    }
                }
                try connection.send(.fileEnd, json: FileEnd(sha256: ""), while: "sending \(file.name) of \(what)")
            }
            try connection.send(Frame(.partEnd), while: "ending \(what)'s part")
        } catch {
            throw refusal(on: connection) ?? error   // the service may have said why it stopped reading
        }
        return try reply(connection, PartReceipt.self, while: "waiting for the service to make \(what)'s part durable")
    }

    /// Uploads the part, retrying with backoff for `retrySeconds` while the service is out of
    /// reach or drops the connection (a part is idempotent: a redelivery replaces or matches it).
    @discardableResult
    public func deliver(_ part: CheckpointPart) throws -> CheckpointReceipt {
        let start = Date()
        var wait = Self.firstRetryWait
        while true {
            do { return CheckpointReceipt(step: part.step, committed: try upload(part).committed, location: location) } catch let error as CheckpointServiceError where error.isTransient {
                let left = retrySeconds - Date().timeIntervalSince(start)
                guard left > 0 else {
                    if retrySeconds == 0 { throw error }
                    throw CheckpointServiceError.notDelivered(address: "\(address)", step: part.step, seconds: retrySeconds, lastError: "\(error)")
                }
                note("checkpoint of step \(part.step) rank \(part.rank) not delivered (\(error)); trying again in \(String(format: "%g", min(wait, left))) s, for at most \(Int(left.rounded(.up))) s more")
                Thread.sleep(forTimeInterval: min(wait, left))
                wait = min(wait * 2, Self.maxRetryWait)
            }
        }
    }

    /// Complete checkpoints on the service, oldest first.
    public func list() throws -> [StepInfo] {
        let connection = try connect()
        try connection.send(Frame(.list), while: "asking for the list of checkpoints")
        return try reply(connection, [StepInfo].self, while: "waiting for the list of checkpoints")
    }

    public func latestStep() throws -> Int? { try list().last?.step }

    /// Downloads the complete checkpoint of `step` into `cacheDirectory/step-NNNNNNNN` (once;
    /// a complete copy already there is reused), every file checked against the SHA-256 the
    /// service sent and against the checkpoint's `checksums.json`. A failed download leaves
    /// nothing behind.
    public func fetch(step: Int) throws -> URL {
        let fm = FileManager.default
        let final = cacheDirectory.appendingPathComponent(CheckpointLayout.directoryName(step: step))
        if fm.fileExists(atPath: final.appendingPathComponent(CheckpointLayout.done).path) { return final }
        let temporary = cacheDirectory.appendingPathComponent(".\(CheckpointLayout.directoryName(step: step)).download-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        do {
            try fm.createDirectory(at: temporary, withIntermediateDirectories: true)
        } catch { throw CheckpointError.writeFailed(path: temporary.path, reason: error.localizedDescription) }
        do {
            let connection = try connect()
            try connection.send(.get, json: GetRequest(step: step), while: "asking for step \(step)")
            try receiveFiles(connection, step: step, into: temporary)
            try verifyDownload(temporary, step: step)
            if fm.fileExists(atPath: final.path) { try fm.removeItem(at: final) }   // an incomplete earlier copy
            try DurableFiles.rename(temporary, to: final)
            return final
        } catch {
            try? fm.removeItem(at: temporary)
            throw error
        }
    }

    /// A download is the complete checkpoint: `DONE`, `checksums.json`, and exactly the files
    /// it lists, each with its SHA-256.
    private func verifyDownload(_ directory: URL, step: Int) throws {
        func corrupt(_ reason: String) -> CheckpointServiceError { .corruptDownload(address: "\(address)", file: "step \(step)", reason: reason) }
        let listed: Set<String>
        do { listed = try CheckpointStore.verifyChecksums(directory) } catch { throw corrupt("\(error)") }
        let present = Set((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
        guard present.contains(CheckpointLayout.done) else { throw corrupt("it lacks \(CheckpointLayout.done)") }
        if let extra = present.subtracting(listed).subtracting([CheckpointLayout.checksums, CheckpointLayout.done]).sorted().first {
            throw corrupt("\(extra) is not listed in \(CheckpointLayout.checksums)")
        }
    }

    private func receiveFiles(_ connection: ServiceConnection, step: Int, into directory: URL) throws {
        while true {
            let frame = try connection.receive(while: "downloading step \(step)")
            switch frame.type {
            case .ok: return
            case .error: throw CheckpointServiceError.rejected(address: "\(address)", reason: String(decoding: frame.payload, as: UTF8.self))
            case .fileBegin:
                guard let begin = try? JSONDecoder().decode(FileBegin.self, from: Data(frame.payload)),
                      !begin.name.isEmpty, !begin.name.hasPrefix("."), !begin.name.contains("/"), begin.size >= 0 else {
                    throw CheckpointServiceError.badFrame(address: "\(address)", reason: "a file announcement that is not one")
                }
                try receiveFile(begin, connection, into: directory.appendingPathComponent(begin.name))
            default:
                throw CheckpointServiceError.badFrame(address: "\(address)", reason: "a \(frame.type) frame while downloading step \(step)")
            }
        }
    }

    private func receiveFile(_ begin: FileBegin, _ connection: ServiceConnection, into url: URL) throws {
        let fd = try DurableFiles.create(url)
        var hasher = SHA256()
        var remaining = begin.size
        do {
            while remaining > 0 {
                let frame = try connection.receive(while: "downloading \(begin.name)")
                guard frame.type == .fileData, !frame.payload.isEmpty, frame.payload.count <= remaining else {
                    throw CheckpointServiceError.badFrame(address: "\(address)", reason: "a \(frame.type) frame inside \(begin.name)")
                }
                hasher.update(data: frame.payload)
                try frame.payload.withUnsafeBytes { try DurableFiles.write(fd, $0, to: url) }
                remaining -= frame.payload.count
            }
        } catch { close(fd); throw error }
        try DurableFiles.finish(fd, url)
        let end = try connection.receive(while: "downloading \(begin.name)")
        guard end.type == .fileEnd, let sum = try? JSONDecoder().decode(FileEnd.self, from: Data(end.payload)) else {
            throw CheckpointServiceError.badFrame(address: "\(address)", reason: "a \(end.type) frame where \(begin.name) should end")
        }
        let actual = CheckpointCommit.hex(hasher.finalize())
        guard actual == sum.sha256 else {
            throw CheckpointServiceError.corruptDownload(address: "\(address)", file: begin.name, reason: "SHA-256 \(actual), the service sent \(sum.sha256)")
        }
    }

    /// A connection that has passed the handshake with the service.
    func connect() throws -> ServiceConnection {
        let fd: Int32
        do {
            fd = try Socket.connect(host: address.host, port: address.port, deadline: Date(timeIntervalSinceNow: connectTimeout),
                                    waitingFor: "the checkpoint service")
        } catch let error as NetworkError {
            throw CheckpointServiceError.unreachable(address: "\(address)", reason: "\(error)")
        }
        let connection = ServiceConnection(fd: fd, address: "\(address)", timeout: ioTimeout)
        let server: String
        do {
            let session = try JobHandshake(token: token).initiate(identity: identity, over: connection.transport(within: ioTimeout))
            server = session.peer
            connection.seal = FrameSeal(session, initiator: true)
        } catch let error as HandshakeError {
            throw CheckpointServiceError.authenticationFailed(address: "\(address)", reason: "\(error)")
        }
        guard server == CheckpointServer.identity else {
            throw CheckpointServiceError.authenticationFailed(address: "\(address)", reason: "it answered as '\(server)', not as a checkpoint service")
        }
        return connection
    }

    /// The service's answer: `ok` with JSON, or its refusal as `rejected`.
    func reply<T: Decodable>(_ connection: ServiceConnection, _ type: T.Type, while doing: String) throws -> T {
        let frame = try connection.receive(while: doing)
        switch frame.type {
        case .ok:
            guard let value = try? JSONDecoder().decode(T.self, from: Data(frame.payload)) else {
                throw CheckpointServiceError.badFrame(address: "\(address)", reason: "an answer that is not JSON while \(doing)")
            }
            return value
        case .error: throw CheckpointServiceError.rejected(address: "\(address)", reason: String(decoding: frame.payload, as: UTF8.self))
        default: throw CheckpointServiceError.badFrame(address: "\(address)", reason: "a \(frame.type) frame while \(doing)")
        }
    }

    /// After a failed send: the refusal the service sent before it stopped reading, if any.
    private func refusal(on connection: ServiceConnection) -> Error? {
        let quick = connection.duplicate(timeout: 2)
        guard let frame = try? quick.receive(while: "reading the service's refusal"), frame.type == .error else { return nil }
        return CheckpointServiceError.rejected(address: "\(address)", reason: String(decoding: frame.payload, as: UTF8.self))
    }
}
