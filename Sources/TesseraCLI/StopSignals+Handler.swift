import Foundation
import Synchronization
import Training

/// The signal handler of `StopSignals` and what it says when a second request ends the process
/// at once. Everything the handler touches is prepared beforehand: it reads a clock, atomics and
/// fixed buffers, and calls only async-signal-safe functions (clock_gettime, poll, write, stat,
/// unlink, signal, raise).
extension StopSignals {
    /// A second signal within this time of the first is the same request delivered twice, not a
    /// second request: `timeout` signals the process and then its whole process group, and a
    /// launcher may forward what a terminal already delivered to its process group.
    static let repeatWindowNanoseconds: Int64 = 500_000_000

    static func handle(_ signalNumber: Int32) {
        let now = monotonicNanoseconds()
        MPIRunAbort.received(signalNumber, now: now)
        if signalNumber == SIGCONT { return }   // only mpirun's first sign of an abort (StopSignals+MPIRun.swift)
        let first = firstSignalAt.compareExchange(expected: 0, desired: now, ordering: .relaxed)
        if first.exchanged {   // the first request: stop after this step with a checkpoint
            stopSignalCount = 1
            return
        }
        if now - first.original < repeatWindowNanoseconds { return }
        // Asked twice: stop now, saying what is left.
        HardStop.sayAndReleaseLock()
        signal(signalNumber, SIG_DFL)
        raise(signalNumber)
    }

    /// Readies the handler's state (lazily initialised statics must not first be touched in it).
    static func prepareHandler() {
        _ = firstSignalAt.load(ordering: .relaxed)
        _ = MPIRunAbort.continuedAt.load(ordering: .relaxed); _ = MPIRunAbort.killDueAt.load(ordering: .relaxed)
        _ = MPIRunAbort.intervalNanoseconds.load(ordering: .relaxed); _ = MPIRunAbort.underMpirun
        HardStop.prepare()
    }

    /// What rank 0's run reports, kept for a second signal: the newest complete checkpoint and
    /// the run directory's lock. Set as `Trainer.onRunEvent`.
    static func observe(runDirectory: String) -> (RunEvent) -> Void {
        HardStop.publish(HardStop.message(runDirectory: runDirectory, newest: nil, stopping: false))
        runState.withLock { $0 = (runDirectory, nil) }
        return { event in
            switch event {
            case let .newestCheckpoint(url, stopping):
                runState.withLock { $0 = (runDirectory, url?.path) }
                HardStop.publish(HardStop.message(runDirectory: runDirectory, newest: url?.path, stopping: stopping))
            case let .holdingRunDirectory(lock):
                HardStop.holdLock(path: lock.path, device: lock.device, inode: lock.inode)
            }
        }
    }

    /// Rank 0's run directory and newest complete checkpoint (nil on other ranks).
    static let runState = Mutex<(runDirectory: String, newest: String?)?>(nil)

    static func monotonicNanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return max(1, Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec))
    }

    /// When the first stop signal arrived (CLOCK_MONOTONIC nanoseconds; 0: none yet).
    static let firstSignalAt = Atomic<Int64>(0)
}

/// The line a second signal writes to standard error, and the run directory lock it removes.
enum HardStop {
    static let capacity = 4096

    /// Two message buffers: a new message is written into the one not published, then published.
    nonisolated(unsafe) static let buffers = UnsafeMutablePointer<UInt8>.allocate(capacity: 2 * capacity)
    /// Which buffer holds the message and its length (`index << 32 | length`); 0: no message.
    static let published = Atomic<Int>(0)

    /// The lock file (NUL-terminated path) with its device and inode; `lockHeld` publishes them.
    nonisolated(unsafe) static let lockPath = UnsafeMutablePointer<CChar>.allocate(capacity: capacity)
    nonisolated(unsafe) static var lockDevice: UInt64 = 0
    nonisolated(unsafe) static var lockInode: UInt64 = 0
    static let lockHeld = Atomic<Bool>(false)

    static func prepare() {
        _ = buffers; _ = lockPath
        _ = published.load(ordering: .relaxed); _ = lockHeld.load(ordering: .relaxed)
    }

    static func message(runDirectory: String, newest: String?, stopping: Bool) -> String {
        let resume = "continue with: \(ResumeCommand.string(runDirectory: runDirectory))"
        guard let newest else {
            return "tessera: stopped at once on a second signal, without a checkpoint of this step; \(runDirectory) holds no complete checkpoint"
        }
        if stopping { return "tessera: stopped at once on a second signal, after writing checkpoint \(newest) of this step; \(resume)" }
        return "tessera: stopped at once on a second signal, without a checkpoint of this step; the newest complete checkpoint is \(newest); \(resume)"
    }

    /// Makes `text` (one line) what a second signal writes.
    static func publish(_ text: String) {
        var bytes = Array(text.utf8.prefix(capacity - 1))
        bytes.append(0x0A)
        let current = published.load(ordering: .relaxed)
        let index = current == 0 ? 0 : 1 - (current >> 32)
        bytes.withUnsafeBufferPointer { (buffers + index * capacity).update(from: $0.baseAddress!, count: $0.count) }
        published.store(index << 32 | bytes.count, ordering: .releasing)
    }

    static func holdLock(path: String, device: UInt64, inode: UInt64) {
        guard path.utf8.count < capacity else { return }
        lockHeld.store(false, ordering: .releasing)
        _ = path.withCString { strcpy(lockPath, $0) }
        lockDevice = device
        lockInode = inode
        lockHeld.store(true, ordering: .releasing)
    }

    /// In the signal handler: the line (unless standard error would block: a stalled reader must
    /// not keep the process alive), then the lock file if it is still this run's.
    static func sayAndReleaseLock() {
        let word = published.load(ordering: .acquiring)
        if word != 0 {
            var target = pollfd(fd: STDERR_FILENO, events: Int16(POLLOUT), revents: 0)
            if poll(&target, 1, 0) == 1, target.revents & Int16(POLLOUT) != 0 {
                _ = write(STDERR_FILENO, buffers + (word >> 32) * capacity, word & 0xFFFF_FFFF)
            }
        }
        if lockHeld.load(ordering: .acquiring) {
            var status = stat()
            if stat(lockPath, &status) == 0, UInt64(status.st_dev) == lockDevice, UInt64(status.st_ino) == lockInode {
                unlink(lockPath)
            }
        }
    }
}
