import Checkpointing
import Foundation
import Synchronization

/// What `mpirun` (OpenMPI 4) does to its ranks when it is itself interrupted (SIGINT or SIGTERM),
/// and how a rank makes the best of it.
///
/// mpirun aborts the job: it sends every rank SIGCONT at once, SIGTERM `odls_base_sigkill_timeout`
/// seconds later (1 by default) and SIGKILL as long again after the SIGTERM. A rank hears of the
/// stop only with the SIGTERM, so it has that one interval to reach the end of its step and save
/// (measured here as the time from the SIGCONT to the SIGTERM). When the checkpoint has not been
/// written `killMarginNanoseconds` before the SIGKILL is due, the ranks stop without it: rank 0
/// says so (naming the newest complete checkpoint, which stays as it was) and releases the run
/// directory's lock, and every rank exits before the SIGKILL. `scripts/mpirun.sh` avoids all this:
/// it passes Ctrl-C on as SIGUSR1, which mpirun forwards at once and which is a plain stop request.
enum MPIRunAbort {
    /// OpenMPI 4's default `odls_base_sigkill_timeout`, used when no SIGCONT came first.
    static let defaultIntervalSeconds = 1.0
    /// How long before the SIGKILL a rank gives up on the checkpoint and exits: time to print,
    /// release the lock and exit on a busy machine.
    static let killMarginNanoseconds: Int64 = 250_000_000

    /// True when this process is a rank started by mpirun (OpenMPI's daemon URI is set).
    static let underMpirun = ProcessInfo.processInfo.environment["OMPI_MCA_orte_hnp_uri"] != nil

    /// When the SIGCONT arrived, and when the SIGKILL is due (CLOCK_MONOTONIC ns; 0: not yet).
    static let continuedAt = Atomic<Int64>(0)
    static let killDueAt = Atomic<Int64>(0)
    /// Set when the process is about to exit on its own (the stop's checkpoint is written).
    static let finishing = Atomic<Bool>(false)

    /// The interval mpirun waits between its signals, for the message.
    static let intervalNanoseconds = Atomic<Int64>(0)

    /// In the signal handler (async-signal-safe: atomics only).
    static func received(_ signalNumber: Int32, now: Int64) {
        guard underMpirun else { return }
        if signalNumber == SIGCONT {
            continuedAt.store(now, ordering: .relaxed)   // the latest: an earlier one may be a shell's fg
        } else if signalNumber == SIGTERM, killDueAt.load(ordering: .relaxed) == 0 {
            let continued = continuedAt.load(ordering: .relaxed)
            let interval = continued > 0 ? now - continued : Int64(configuredIntervalSeconds * 1e9)
            intervalNanoseconds.store(interval, ordering: .relaxed)
            killDueAt.store(now + interval, ordering: .releasing)
        }
    }

    /// `odls_base_sigkill_timeout` as mpirun passed it on (its `--mca` options reach the ranks'
    /// environment), else OpenMPI's default. Read before any signal arrives.
    static let configuredIntervalSeconds: Double =
        ProcessInfo.processInfo.environment["OMPI_MCA_odls_base_sigkill_timeout"].flatMap(Double.init) ?? defaultIntervalSeconds

    /// Starts the thread that stops the rank before mpirun's SIGKILL (only under mpirun).
    static func startWatchdog() {
        guard underMpirun else { return }
        _ = configuredIntervalSeconds; _ = finishing.load(ordering: .relaxed)
        let thread = Thread {
            while true {
                usleep(20_000)
                let due = killDueAt.load(ordering: .acquiring)
                guard due > 0, !finishing.load(ordering: .acquiring) else { continue }
                // The rank that reports (rank 0) gives up first: a rank that exits before it makes
                // mpirun kill the job at once, and the line saying why would never be printed.
                let reports = StopSignals.runState.withLock { $0 } != nil
                let margin = reports ? killMarginNanoseconds : killMarginNanoseconds / 2
                if StopSignals.monotonicNanoseconds() >= due - margin { giveUp() }
            }
        }
        thread.name = "tessera-mpirun-deadline"
        thread.start()
    }

    /// Stops without the checkpoint: rank 0 says so and releases the lock; every rank exits.
    static func giveUp() -> Never {
        if !finishing.exchange(true, ordering: .acquiringAndReleasing) {
            let seconds = Double(intervalNanoseconds.load(ordering: .relaxed)) / 1e9
            let state = StopSignals.runState.withLock { $0 }
            if let state {
                var line = String(format: "tessera: mpirun sends SIGKILL %.1f s after its SIGTERM (odls_base_sigkill_timeout), too soon to write this step's checkpoint; stopped without it: ", seconds)
                // The directory holds checkpoints committed since the run last reported one.
                let onDisk = CheckpointStore(root: URL(fileURLWithPath: state.runDirectory).appendingPathComponent("checkpoints")).latest()?.path
                if let newest = onDisk ?? state.newest {
                    line += "the newest complete checkpoint \(newest) is kept; continue with: \(ResumeCommand.string(runDirectory: state.runDirectory))"
                } else {
                    line += "\(state.runDirectory) holds no complete checkpoint"
                }
                line += ". To stop with a checkpoint, press Ctrl-C under scripts/mpirun.sh or send mpirun SIGUSR1 (`kill -USR1 PID`), or give mpirun a longer --mca odls_base_sigkill_timeout"
                HardStop.publish(line)
                HardStop.sayAndReleaseLock()
            }
        }
        _exit(1)
    }
}
