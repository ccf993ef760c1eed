import Collectives
import Foundation

/// Enforces the deadline of blocking MPI collectives.
///
/// MPI cannot cancel a collective, so a call whose peers never arrive cannot return or throw.
/// Each blocking call is registered here with its deadline; a dedicated thread waits for the
/// earliest one and, if the call is still running when it passes, hands the timeout to
/// `onExpiry`, which must end the process (the executable reports one line and aborts the job).
final class DeadlineWatchdog {
    private let condition = NSCondition()
    private var armed: [UInt64: (operation: String, deadline: Date, seconds: Double)] = [:]
    private var next: UInt64 = 0
    private var started = false
    private let onExpiry: (CollectiveError) -> Void

    init(onExpiry: @escaping (CollectiveError) -> Void) {
        self.onExpiry = onExpiry
    }

    /// Runs `body` under a deadline of `seconds`.
    func guarded<T>(_ operation: @autoclosure () -> String, seconds: Double, _ body: () throws -> T) rethrows -> T {
        condition.lock()
        next += 1
        let token = next
        armed[token] = (operation(), Date(timeIntervalSinceNow: seconds), seconds)
        if !started {
            started = true
            // The thread keeps the watchdog alive (it waits for deadlines for the rest of the
            // process): the communicators that share it may all be gone before it wakes.
            let thread = Thread { self.watch() }
            thread.name = "tessera-mpi-deadline"
            thread.start()
        }
        condition.signal()
        condition.unlock()
        defer {
            condition.lock()
            armed[token] = nil
            condition.unlock()
        }
        return try body()
    }

    private func watch() {
        condition.lock()
        while true {
            guard let (_, first) = armed.min(by: { $0.value.deadline < $1.value.deadline }) else {
                condition.wait()
                continue
            }
            if Date() >= first.deadline {
                condition.unlock()
                onExpiry(.timeout(operation: first.operation, waitingFor: [], seconds: first.seconds))
                return
            }
            _ = condition.wait(until: first.deadline)
        }
    }
}
