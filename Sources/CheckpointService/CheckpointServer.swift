import Checkpointing
import Foundation
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// The checkpoint service (`tessera ckpt serve`): receives the parts of checkpoints from the
/// ranks of a training job over TCP, commits a step once every rank's part has arrived and
/// verified, serves complete checkpoints back, and applies retention.
///
/// Layout under `root`: complete checkpoints `step-NNNNNNNN/` (the parts' files,
/// `checksums.json`, `DONE`), committed by `CheckpointCommit` exactly as the directory sink
/// commits them, so both produce identical files; a step being assembled in
/// `.step-NNNNNNNN.partial/` (`CheckpointLayout.partialName`: files of acknowledged parts only),
/// the files of parts still arriving in `.step-NNNNNNNN.incoming/`, and the acknowledged parts'
/// manifests in `.step-NNNNNNNN.parts/rank-R.json`. Everything hidden is invisible to readers,
/// so a crash at any moment leaves either a complete checkpoint or none. A committed step is
/// never committed again (a part redelivered for it is only compared with it).
///
/// Threads: one accept thread and one thread per connection (never the concurrency pool); the
/// assembly and commit of steps are serialised by one lock. Clients must prove the job token
/// (`JobHandshake`) within `UnauthenticatedConnections.handshakeSeconds` for the whole
/// exchange, at most `UnauthenticatedConnections.defaultCapacity` at once (the oldest is
/// dropped first); others are refused and logged, and the service keeps serving. At most
/// `maxClients` clients that proved the token are served at once; one more is refused in one
/// line (`busyRefusal`), which a client's `deliver` treats as transient and retries.
public final class CheckpointServer: @unchecked Sendable {
    public let root: URL
    public let retention: CheckpointRetention
    /// Runs the jobs clients submit (`tessera soup --service`), each in a child process; nil:
    /// jobs are refused. Set before `start()`.
    public var jobs: ServiceJobProcesses?
    /// Seconds without progress after which a connection is dropped.
    public let ioTimeout: Double
    public static let identity = "tessera checkpoint service"
    /// Clients that proved the token served at once (`ckpt serve --max-clients`).
    public let maxClients: Int
    /// The default: far above a job's ranks saving at once plus a few `ckpt` commands, far below
    /// the threads and descriptors a host gives a process.
    public static let defaultMaxClients = 64
    /// How a refusal for being busy starts (a client retries it).
    public static let busyPrefix = "busy: "
    static func busyRefusal(_ maxClients: Int) -> String {
        "\(busyPrefix)\(maxClients) authenticated clients are being served, the most this service takes at once (ckpt serve --max-clients); try again shortly"
    }

    let token: String
    let host: String
    let requestedPort: UInt16
    let log: @Sendable (String) -> Void
    let lock = NSLock()
    private var listener: Int32 = -1
    private var stopped = false
    private var connections: [Int: Int32] = [:]
    private var serving = 0
    private var nextConnection = 0
    private let handshaking = UnauthenticatedConnections()
    private let acceptLoopDone = DispatchSemaphore(value: 0)
    /// The bound port (after `start`).
    public private(set) var port: UInt16 = 0

    /// A service over `root`, listening on `host:port` (0: any free port) once started.
    /// `log` receives one line per event (refusals, received parts, commits, deletions).
    public init(root: URL, token: String, host: String = "127.0.0.1", port: UInt16 = 0, retention: CheckpointRetention = CheckpointRetention(),
                ioTimeout: Double = 60, maxClients: Int = CheckpointServer.defaultMaxClients,
                log: @escaping @Sendable (String) -> Void = CheckpointServer.standardErrorLog) {
        self.root = root; self.token = token; self.host = host; self.requestedPort = port
        self.retention = retention; self.ioTimeout = ioTimeout; self.maxClients = max(1, maxClients); self.log = log
    }

    public static let standardErrorLog: @Sendable (String) -> Void = { line in
        try? FileHandle.standardError.write(contentsOf: Data("tessera: ckpt serve: \(line)\n".utf8))
    }

    /// Recovers what a previous run left under `root`, binds, and starts accepting. Throws
    /// when the token is empty, the root cannot be used, or the address cannot be bound.
    public func start() throws {
        guard !token.isEmpty else { throw CheckpointServiceError.missingToken(hint: "set TESSERA_JOB_TOKEN or pass --token-file") }
        do { try JobToken.validate(token, source: "the service's token") } catch {
            throw CheckpointServiceError.weakToken(reason: "\(error)")
        }
        do { try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true) } catch {
            throw CheckpointError.writeFailed(path: root.path, reason: error.localizedDescription)
        }
        lock.lock()
        defer { lock.unlock() }
        try recover()
        do {
            let bound = try Socket.listen(host: host, port: requestedPort)
            listener = bound.fd; port = bound.port
        } catch {
            throw CheckpointServiceError.unreachable(address: "\(host):\(requestedPort)", reason: "cannot listen there (\(error)); choose another --listen")
        }
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "ckpt-accept"
        thread.start()
        log("serving \(root.path) on \(host):\(port) (keep last \(retention.keepLast), best \(retention.keepBest))")
    }

    /// Stops accepting, drops open connections (their parts are not acknowledged), terminates
    /// running jobs' processes, and waits for the accept thread.
    public func stop() {
        jobs?.stopAll()
        lock.lock()
        guard !stopped, listener >= 0 else { lock.unlock(); return }
        stopped = true
        for fd in connections.values { shutdown(fd, Int32(SHUT_RDWR)) }
        lock.unlock()
        acceptLoopDone.wait()
        acceptLoopDone.signal()   // for `wait()` callers
    }

    /// Blocks until `stop` (from another thread); `tessera ckpt serve` waits here forever.
    public func wait() {
        acceptLoopDone.wait()
        acceptLoopDone.signal()
    }

    private func acceptLoop() {
        defer { close(listener); acceptLoopDone.signal() }
        while true {
            lock.lock(); let done = stopped; lock.unlock()
            if done { return }
            let accepted: (fd: Int32, peer: String)?
            do { accepted = try Socket.accept(listener, deadline: Date(timeIntervalSinceNow: 0.2)) } catch {
                // Out of file descriptors, most likely: a stranger's handshake gives its own up first.
                let dropped = handshaking.dropOldest()
                log("accept failed: \(error); \(dropped.map { "dropped the handshake of \($0)" } ?? "no handshake to drop"); still serving")
                usleep(100_000); continue
            }
            guard let (fd, peer) = accepted else { continue }
            lock.lock()
            let id = nextConnection
            nextConnection += 1
            connections[id] = fd
            lock.unlock()
            let connection = ServiceConnection(fd: fd, address: peer, timeout: ioTimeout)
            let seconds = min(ioTimeout, UnauthenticatedConnections.handshakeSeconds)
            handshaking.handshake(fd, peer: peer, name: "ckpt-conn-\(id)", log: log, { [token] in
                try JobHandshake(token: token).accept(identity: Self.identity, over: connection.transport(within: seconds))
            }, done: { [self] result in
                withExtendedLifetime(connection) {   // the fd stays open until `stop` can no longer see it
                    switch result {
                    case .success(let session):
                        connection.seal = FrameSeal(session, initiator: false)   // every frame from here on is sealed
                        lock.lock()
                        let admitted = serving < maxClients
                        if admitted { serving += 1 }
                        lock.unlock()
                        guard admitted else {
                            log("refused '\(session.peer)' from \(peer): \(maxClients) authenticated clients are being served (--max-clients)")
                            connection.refuse(Self.busyRefusal(maxClients))
                            break
                        }
                        serve(connection, client: session.peer, id: id)
                        lock.lock(); serving -= 1; lock.unlock()
                    case .failure(let error): log("refused a connection from \(peer): \(error)")
                    }
                    lock.lock(); connections[id] = nil; lock.unlock()
                }
            })
        }
    }

    /// One client that proved the token: requests until it hangs up.
    private func serve(_ connection: ServiceConnection, client: String, id: Int) {
        let peer = connection.address
        while true {
            let frame: Frame
            do { frame = try connection.receive(while: "waiting for a request") } catch CheckpointServiceError.connectionLost {
                return   // the client hung up between requests
            } catch {
                log("dropped '\(client)' from \(peer): \(error)")
                connection.refuse("\(error)")
                return
            }
            do {
                switch frame.type {
                case .putPart: try receivePart(frame, from: connection, id: id)
                case .list: try connection.send(.ok, json: completeSteps(), while: "answering a list request")
                case .get: try sendCheckpoint(frame, to: connection)
                case .job: try runJob(frame, on: connection, client: client)
                default: throw CheckpointServiceError.badFrame(address: peer, reason: "a \(frame.type) frame is not a request")
                }
            } catch {
                log("request from '\(client)' at \(peer) failed: \(error)")
                connection.refuse("\(error)")
                return
            }
        }
    }
}
