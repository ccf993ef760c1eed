import Checkpointing
import Foundation

/// Runs a rank's checkpoint saves on a dedicated thread, one at a time, while training goes on.
///
/// The training thread calls `waitForInFlight()` before `submit`, so at most one save is in
/// flight; a failed save is kept until the training thread takes it (`takeFailure`), so it
/// is reported at the next save or at the end rather than lost.
final class CheckpointWriter: @unchecked Sendable {
    private let condition = NSCondition()
    private var inFlightStep: Int?
    private var submittedStep: Int?
    private var failure: (step: Int, error: Error)?
    private var committed: [CheckpointReceipt] = []

    /// Blocks until no save is in flight; returns the step of the one it waited for and the
    /// seconds it waited (nil when none was in flight).
    /// `limit`: give up after that many seconds (the save goes on; nil: no limit, the sink's
    /// own deadlines bound it).
    @discardableResult
    func waitForInFlight(limit: Double? = nil) -> (step: Int, seconds: Double)? {
        condition.lock()
        defer { condition.unlock() }
        guard let step = inFlightStep else { return nil }
        let start = Date()
        if let limit {
            let deadline = start.addingTimeInterval(limit)
            while inFlightStep != nil, condition.wait(until: deadline) {}
        } else {
            while inFlightStep != nil { condition.wait() }   // (wait(until: .distantFuture) traps in corelibs Foundation)
        }
        return (step, Date().timeIntervalSince(start))
    }

    /// The step of the save in flight, if any.
    var inFlight: Int? {
        condition.lock()
        defer { condition.unlock() }
        return inFlightStep
    }

    /// The step of the latest save submitted (in flight or finished), if any.
    var lastSubmitted: Int? {
        condition.lock()
        defer { condition.unlock() }
        return submittedStep
    }

    /// Starts `job` (the save of `step`; it returns the sink's receipt) on a new thread. Call
    /// after `waitForInFlight()`.
    func submit(step: Int, _ job: @escaping () throws -> CheckpointReceipt) {
        condition.lock()
        precondition(inFlightStep == nil, "CheckpointWriter: a save is already in flight")
        inFlightStep = step
        submittedStep = step
        condition.unlock()
        let thread = Thread { [self] in
            let outcome = Result { try job() }
            condition.lock()
            switch outcome {
            case .success(let receipt): committed.append(receipt)
            case .failure(let error): failure = (step, error)
            }
            inFlightStep = nil
            condition.broadcast()
            condition.unlock()
        }
        thread.name = "tessera-checkpoint-writer"
        thread.start()
    }

    /// The failed save, if any, once (later calls return nil until another fails).
    func takeFailure() -> (step: Int, error: Error)? {
        condition.lock()
        defer { condition.unlock() }
        defer { failure = nil }
        return failure
    }

    /// Receipts of the saves finished since the last call, oldest first.
    func takeCommitted() -> [CheckpointReceipt] {
        condition.lock()
        defer { condition.unlock() }
        defer { committed = [] }
        return committed
    }
}
