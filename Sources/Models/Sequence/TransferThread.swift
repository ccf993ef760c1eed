import Foundation

/// One dedicated thread that runs a ring's transfers in order for the ring's whole life (not a
/// new thread per transfer, and never the Swift concurrency pool: a transfer blocks on the
/// communicator). It ends once its owner calls `stop` and the queue is empty.
final class TransferThread: @unchecked Sendable {
    private let condition = NSCondition()
    private var queued: [() -> Void] = [], stopping = false

    init(name: String) {
        let thread = Thread { [self] in   // holds the queue until `stop`
            while let body = next() { body() }
        }
        (thread.name, thread.stackSize) = (name, 1 << 20)
        thread.start()
    }

    /// Runs `body` after what is queued before it; `wait` on the result rethrows its error.
    func start(_ body: @escaping () throws -> Void) -> RingTransfer {
        let transfer = RingTransfer()
        locked {
            queued.append { do { try body() } catch { transfer.error = error }; transfer.done.signal() }
        }
        return transfer
    }

    func stop() { locked { stopping = true } }

    private func locked(_ change: () -> Void) { condition.lock(); change(); condition.signal(); condition.unlock() }

    /// The next queued body, waiting for one; nil once stopped with nothing queued.
    private func next() -> (() -> Void)? {
        condition.lock()
        defer { condition.unlock() }
        while queued.isEmpty && !stopping { condition.wait() }
        return queued.isEmpty ? nil : queued.removeFirst()
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
