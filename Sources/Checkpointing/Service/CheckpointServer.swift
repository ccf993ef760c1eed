import CollectivesTCP
import Foundation
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
/// (`JobHandshake`); others are refused and logged, and the service keeps serving.
public final class CheckpointServer: @unchecked Sendable {
    public let root: URL
    public let retention: CheckpointRetention
    /// Runs the jobs clients submit (`tessera soup --service`); nil: jobs are refused. Set before `start()`.
    public var jobRunner: ServiceJobRunner?
    /// Seconds without progress after which a connection is dropped.
    public let ioTimeout: Double
    public static let identity = "tessera checkpoint service"

    let token: String
    let host: String
    let requestedPort: UInt16
    let log: @Sendable (String) -> Void
    let lock = NSLock()
    private var listener: Int32 = -1
    private var stopped = false
    private var connections: [Int: Int32] = [:]
    private var nextConnection = 0
    private let acceptLoopDone = DispatchSemaphore(value: 0)
    /// The bound port (after `start`).
    public private(set) var port: UInt16 = 0

    /// A service over `root`, listening on `host:port` (0: any free port) once started.
    /// `log` receives one line per event (refusals, received parts, commits, deletions).
    public init(root: URL, token: String, host: String = "127.0.0.1", port: UInt16 = 0, retention: CheckpointRetention = CheckpointRetention(),
                ioTimeout: Double = 60, log: @escaping @Sendable (String) -> Void = CheckpointServer.standardErrorLog) {
        self.root = root; self.token = token; self.host = host; self.requestedPort = port
        self.retention = retention; self.ioTimeout = ioTimeout; self.log = log
    }

    public static let standardErrorLog: @Sendable (String) -> Void = { line in
        try? FileHandle.standardError.write(contentsOf: Data("tessera: ckpt serve: \(line)\n".utf8))
    }

    /// Recovers what a previous run left under `root`, binds, and starts accepting. Throws
    /// when the token is empty, the root cannot be used, or the address cannot be bound.
    public func start() throws {
        guard !token.isEmpty else { throw CheckpointServiceError.missingToken(hint: "set TESSERA_JOB_TOKEN or pass --token-file") }
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

    /// Stops accepting, drops open connections (their parts are not acknowledged), and waits
    /// for the accept thread.
    public func stop() {
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
                log("accept failed: \(error); still serving")
                usleep(100_000); continue
            }
            guard let (fd, peer) = accepted else { continue }
            lock.lock()
            let id = nextConnection
            nextConnection += 1
            connections[id] = fd
            lock.unlock()
            let thread = Thread { [self] in
                let connection = ServiceConnection(fd: fd, address: peer, timeout: ioTimeout)
                withExtendedLifetime(connection) {   // the fd stays open until `stop` can no longer see it
                    serve(connection, id: id)
                    lock.lock(); connections[id] = nil; lock.unlock()
                }
            }
            thread.name = "ckpt-conn-\(id)"
            thread.start()
        }
    }

    /// One client: the handshake, then requests until it hangs up.
    private func serve(_ connection: ServiceConnection, id: Int) {
        let peer = connection.address
        let client: String
        do {
            client = try JobHandshake(token: token).accept(identity: Self.identity, over: connection.transport)
        } catch {
            log("refused a connection from \(peer): \(error)")
            return
        }
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

    // MARK: Steps on disk

    func finalURL(_ step: Int) -> URL { root.appendingPathComponent(CheckpointLayout.directoryName(step: step)) }
    func assemblyURL(_ step: Int) -> URL { root.appendingPathComponent(CheckpointLayout.partialName(step: step)) }
    func manifestsURL(_ step: Int) -> URL { root.appendingPathComponent(".\(CheckpointLayout.directoryName(step: step)).parts") }
    /// Where the files of parts still arriving are written (`ID-NAME`, ID the connection's), out
    /// of the assembly, so a commit can never pick one up.
    func incomingURL(_ step: Int) -> URL { root.appendingPathComponent(".\(CheckpointLayout.directoryName(step: step)).incoming") }

    /// Complete checkpoints under the root, oldest first.
    public func completeSteps() -> [StepInfo] {
        CheckpointStore(root: root).complete().map { entry in
            let names = (try? FileManager.default.contentsOfDirectory(atPath: entry.url.path)) ?? []
            let bytes = names.reduce(0) { sum, name in
                sum + (((try? FileManager.default.attributesOfItem(atPath: entry.url.appendingPathComponent(name).path))?[.size] as? Int) ?? 0)
            }
            return StepInfo(step: entry.step, validationLoss: CheckpointStore.validationLoss(of: entry.url), bytes: bytes)
        }
    }

    /// Steps with an assembly, manifest or incoming directory (`.step-N.partial`, `.step-N.parts`, `.step-N.incoming`).
    func stepsInAssembly() -> Set<Int> {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return Set(names.compactMap { name -> Int? in
            guard name.hasPrefix(".step-") else { return nil }
            let rest = name.dropFirst(".step-".count)
            guard let dot = rest.firstIndex(of: "."), [".partial", ".parts", ".incoming"].contains(String(rest[dot...])) else { return nil }
            return Int(rest[..<dot])
        })
    }

    /// Acknowledged parts of `step`, by rank.
    func manifests(_ step: Int) -> [Int: PartHeader] {
        let dir = manifestsURL(step)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        var result: [Int: PartHeader] = [:]
        for name in names where name.hasPrefix("rank-") && name.hasSuffix(".json") {
            if let data = FileManager.default.contents(atPath: dir.appendingPathComponent(name).path),
               let header = try? JSONDecoder().decode(PartHeader.self, from: data) { result[header.rank] = header }
        }
        return result
    }

    func removeAssembly(_ step: Int) {
        try? FileManager.default.removeItem(at: assemblyURL(step))
        try? FileManager.default.removeItem(at: manifestsURL(step))
        try? FileManager.default.removeItem(at: incomingURL(step))
    }

    /// Called with the lock held: what a previous run left. Steps at or below the newest
    /// complete one are dropped; half-committed steps (`DONE` in the assembly) are finished if
    /// they verify; steps whose parts all arrived are committed; parts still arriving when it
    /// stopped (`.step-N.incoming`, files of no acknowledged part) are deleted; `.step-N.replaced`
    /// (a replacement of step N, by whatever committed into this root, cut short) is deleted, or
    /// restored when it is the only copy of step N (`CheckpointCommit.recoverReplaced`).
    private func recover() throws {
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: root.path)) ?? [] where name.hasSuffix(".deleting") {
            try? fm.removeItem(at: root.appendingPathComponent(name))
        }
        CheckpointCommit.recoverReplaced(root: root).forEach(log)
        for step in stepsInAssembly().sorted() {
            try? fm.removeItem(at: incomingURL(step))
            let assembly = assemblyURL(step)
            guard fm.fileExists(atPath: assembly.appendingPathComponent(CheckpointLayout.done).path) else { continue }
            // `CheckpointCommit` writes DONE after checksums.json and before the rename.
            if !fm.fileExists(atPath: finalURL(step).path), (try? CheckpointStore.verifyChecksums(assembly)) != nil {
                try DurableFiles.rename(assembly, to: finalURL(step))
                log("finished committing step \(step), interrupted by the previous run")
            }
            removeAssembly(step)
        }
        let newest = completeSteps().last?.step ?? -1
        for step in stepsInAssembly().sorted() {
            if step <= newest {
                removeAssembly(step)
                log("removed the unfinished step \(step): step \(newest) is complete")
                continue
            }
            let parts = manifests(step)
            let listed = Set(parts.values.flatMap { $0.files.map(\.name) })
            let assembly = assemblyURL(step)
            for name in (try? fm.contentsOfDirectory(atPath: assembly.path)) ?? [] where !listed.contains(name) {
                try? fm.removeItem(at: assembly.appendingPathComponent(name))
            }
            if let ranks = parts.values.first?.ranks, Set(parts.keys) == Set(0..<ranks) {
                do { try commit(step, parts) } catch let error as CheckpointServiceError {
                    log("\(error)")   // a step that can never be committed was removed; the others go on
                }
            } else {
                log("step \(step): parts of ranks \(parts.keys.sorted()) kept; waiting for the others")
            }
        }
    }

    /// Called with the lock held once every rank's part of `step` is durable: the acknowledged
    /// files (and nothing else) committed by `CheckpointCommit`, older unfinished steps removed,
    /// retention applied. Parts that do not make a checkpoint (rank 0's metadata missing, a file
    /// the index names that no rank sent) can never be committed: the step is removed and the
    /// error is `invalidPart` naming what is missing. A failed write throws and keeps the step.
    func commit(_ step: Int, _ parts: [Int: PartHeader]) throws {
        let listed = Set(parts.values.flatMap { $0.files.map(\.name) })
        let assembly = assemblyURL(step)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: assembly.path)) ?? [] where !listed.contains(name) {
            try? FileManager.default.removeItem(at: assembly.appendingPathComponent(name))
        }
        let final: URL
        do {
            final = try CheckpointCommit.commit(partial: assembly, root: root, step: step)
        } catch let error as CheckpointError {
            if case .writeFailed = error { throw error }
            removeAssembly(step)
            throw CheckpointServiceError.invalidPart(reason: "step \(step) cannot be committed and was removed: \(error)")
        }
        try? FileManager.default.removeItem(at: manifestsURL(step))
        // A redelivered part still arriving keeps the incoming directory (it removes it when it
        // is acknowledged); a later commit or a restart clears what a dropped one left.
        rmdir(incomingURL(step).path)
        log("committed step \(step) (\(parts.count) part(s), \(listed.count) files) as \(final.path)")
        for older in stepsInAssembly() where older < step {
            removeAssembly(older)
            log("removed the unfinished step \(older): step \(step) is complete")
        }
        for deleted in retention.apply(root: root) {
            log("retention: deleted step \(CheckpointLayout.step(ofDirectory: deleted.lastPathComponent).map(String.init) ?? deleted.lastPathComponent)")
        }
    }
}
