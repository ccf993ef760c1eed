import Foundation

/// The child processes of one `tessera launch`: starts them, relays their output, forwards
/// signals, and stops them all when one fails.
final class LocalRanks {
    let plan: Launch.Plan
    let arguments: [String]
    let graceSeconds: Double
    private var processes: [Process] = []
    private let lock = NSLock()
    private var firstFailure: (rank: Int, status: Int32, reason: Process.TerminationReason)?
    private let finished = DispatchGroup()
    private var signalSources: [DispatchSourceSignal] = []
    private var relays: [Thread] = []

    init(plan: Launch.Plan, arguments: [String], graceSeconds: Double) {
        self.plan = plan
        self.arguments = arguments
        self.graceSeconds = graceSeconds
    }

    /// Runs every rank to the end; returns the exit status for the launcher.
    func run() throws -> Int32 {
        forwardSignals()
        for local in 0..<plan.localRanks {
            do { try start(rank: plan.firstRank + local, localRank: local) } catch {
                stopOthers()   // the ranks already started would wait for this one until their deadline
                throw CommandLineError.rankStartFailed(rank: plan.firstRank + local, reason: error.localizedDescription)
            }
        }
        finished.wait()
        for thread in relays { while !thread.isFinished { usleep(1000) } }
        if interrupted {
            try? FileHandle.standardError.write(contentsOf: Data("tessera launch: interrupted; every rank was asked to stop\n".utf8))
            return 130
        }
        if let failure = firstFailure {
            let how = failure.reason == .uncaughtSignal ? "was killed by signal \(failure.status)" : "exited with status \(failure.status)"
            try? FileHandle.standardError.write(contentsOf: Data("tessera launch: rank \(failure.rank) \(how); stopped the other ranks\n".utf8))
            return 1
        }
        return 0
    }

    private func start(rank: Int, localRank: Int) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["TESSERA_RANK"] = String(rank)
        env["TESSERA_LOCAL_RANK"] = String(localRank)
        env["TESSERA_WORLD_SIZE"] = String(plan.worldSize)
        env["TESSERA_MASTER_ADDR"] = plan.masterAddress
        env["TESSERA_MASTER_PORT"] = String(plan.masterPort)
        env["TESSERA_JOB_TOKEN"] = plan.token
        if let interface = plan.interface { env["TESSERA_SOCKET_IFNAME"] = interface }
        if env["OPENBLAS_NUM_THREADS"] == nil { env["OPENBLAS_NUM_THREADS"] = "1" }
        process.environment = env
        let errorPipe = Pipe()
        process.standardError = errorPipe
        relay(errorPipe.fileHandleForReading, prefix: "[rank \(rank)] ", to: .standardError)
        if rank != 0 {
            let outputPipe = Pipe()
            process.standardOutput = outputPipe
            relay(outputPipe.fileHandleForReading, prefix: "[rank \(rank)] ", to: .standardError)
        }
        finished.enter()
        process.terminationHandler = { [weak self] child in
            self?.exited(rank: rank, child)
        }
        try process.run()
        lock.lock(); processes.append(process); lock.unlock()
    }

    /// Copies a child's stream line by line with a rank prefix (on a thread of its own).
    private func relay(_ handle: FileHandle, prefix: String, to output: FileHandle) {
        let thread = Thread {
            var pending = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                pending.append(chunk)
                while let newline = pending.firstIndex(of: 0x0A) {
                    try? output.write(contentsOf: Data(prefix.utf8) + pending[pending.startIndex...newline])
                    pending.removeSubrange(pending.startIndex...newline)
                }
            }
            if !pending.isEmpty { try? output.write(contentsOf: Data(prefix.utf8) + pending + Data("\n".utf8)) }
        }
        relays.append(thread)
        thread.start()
    }

    private func exited(rank: Int, _ child: Process) {
        lock.lock()
        let failed = child.terminationStatus != 0 && firstFailure == nil
        if failed { firstFailure = (rank, child.terminationStatus, child.terminationReason) }
        // After a forwarded Ctrl-C every rank is already stopping (and checkpointing): let them.
        let stop = failed && !interrupted
        lock.unlock()
        if stop { stopOthers(after: Self.reportSeconds) }
        finished.leave()
    }

    /// Set once a signal has been forwarded to the ranks.
    private var interrupted = false

    /// How long the other ranks may take to exit on their own after one fails, before they are
    /// stopped. A rank waiting on the failed one sees its connection close within milliseconds
    /// and exits with the line naming it (`rank 1 was lost during allReduce`), which says more
    /// than the launcher can; stopped at once, it would often be killed before writing it.
    static let reportSeconds = 1.0

    /// `stopOthers()` after `delay` seconds, unless a signal has been forwarded meanwhile (the
    /// ranks are then stopping on their own, and a second signal would cut their checkpoint short).
    private func stopOthers(after delay: Double) {
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) { [weak self] in
            guard let self else { return }
            self.lock.lock(); let interrupted = self.interrupted; self.lock.unlock()
            if !interrupted { self.stopOthers() }
        }
    }

    /// SIGTERM to every rank still running, SIGKILL after the grace period.
    private func stopOthers() {
        lock.lock(); let running = processes.filter(\.isRunning); lock.unlock()
        for p in running { kill(p.processIdentifier, SIGTERM) }
        DispatchQueue.global().asyncAfter(deadline: .now() + graceSeconds) {
            for p in running where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
    }

    /// Ctrl-C and SIGTERM go to every rank; the launcher then waits for them to exit.
    private func forwardSignals() {
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler { [weak self] in
                guard let self else { return }
                self.lock.lock(); self.interrupted = true; let running = self.processes.filter(\.isRunning); self.lock.unlock()
                for p in running { kill(p.processIdentifier, signalNumber) }
            }
            source.resume()
            signalSources.append(source)
        }
    }
}
