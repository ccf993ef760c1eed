import Foundation

/// One dedicated thread that runs a ring's transfers in order, for the ring's whole life: a
/// transfer blocks on the communicator, so it never runs on the Swift concurrency pool, and a
/// ring making thousands of transfers a step does not start a thread for each. The thread ends
/// when its owner calls `stop` (after the queued transfers).
final class TransferThread: @unchecked Sendable {
    private let condition = NSCondition()
    private var queued: [() -> Void] = []
    private var stopping = false

    init(name: String) {
        let thread = Thread { [self] in run() }   // holds the queue until `stop`
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Runs `body` on the thread, after what is queued before it; `wait` on the result returns
    /// once it has run and rethrows its error.
    func start(_ body: @escaping () throws -> Void) -> RingTransfer {
        let transfer = RingTransfer()
        condition.lock()
        queued.append {
            do { try body() } catch { transfer.error = error }
            transfer.done.signal()
        }
        condition.signal()
        condition.unlock()
        return transfer
    }

    /// Lets the thread end once the queue is empty.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while queued.isEmpty && !stopping { condition.wait() }
            if queued.isEmpty { condition.unlock(); return }
            let body = queued.removeFirst()
            condition.unlock()
            body()
        }
    }
}

/// A transfer in flight; `wait` returns once it is complete and rethrows its failure.
final class RingTransfer: @unchecked Sendable {
    let done = DispatchSemaphore(value: 0)
    var error: Error?

    func wait() throws {
        done.wait()
        if let error { throw error }
    }
}
