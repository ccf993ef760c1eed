import Foundation

/// Which committed checkpoints to keep: the newest `keepLast`, the `keepBest` with the lowest
/// validation loss (recorded in `trainer_state.json`; checkpoints without one do not compete),
/// and always the newest. `keepLast = 0` keeps everything.
public struct CheckpointRetention: Equatable, Sendable {
    public var keepLast: Int
    public var keepBest: Int

    public init(keepLast: Int = 0, keepBest: Int = 0) { self.keepLast = keepLast; self.keepBest = keepBest }

    /// The steps to keep among `checkpoints` (step and validation loss, any order).
    public func kept(_ checkpoints: [(step: Int, validationLoss: Double?)]) -> Set<Int> {
        let steps = checkpoints.map(\.step).sorted()
        guard keepLast > 0, let newest = steps.last else { return Set(steps) }
        var kept = Set(steps.suffix(keepLast))
        kept.insert(newest)
        let scored = checkpoints.compactMap { c in c.validationLoss.flatMap { $0.isFinite ? (c.step, $0) : nil } }
        for (step, _) in scored.sorted(by: { ($0.1, -$0.0) < ($1.1, -$1.0) }).prefix(keepBest) { kept.insert(step) }
        return kept
    }

    /// Deletes the committed checkpoints under `root` that `kept` leaves out; returns them.
    /// Each is first renamed out of sight (`.step-N.deleting`), so a crash mid-delete never
    /// leaves a half-deleted directory that looks complete; the files are then unlinked on a
    /// background thread (`BackgroundDeletions`: unlinking a big checkpoint took a fifth of a
    /// save), which the process waits for when it exits. What a crash leaves is removed by
    /// the next run's or the service's start-up.
    @discardableResult
    public func apply(root: URL) -> [URL] {
        let fm = FileManager.default
        let complete = CheckpointStore(root: root).complete()
        let keep = kept(complete.map { ($0.step, CheckpointStore.validationLoss(of: $0.url)) })
        var removed: [URL] = []
        for c in complete where !keep.contains(c.step) {
            let doomed = root.appendingPathComponent("." + c.url.lastPathComponent + ".deleting")
            guard (try? fm.moveItem(at: c.url, to: doomed)) != nil else { continue }
            BackgroundDeletions.shared.remove(doomed)
            removed.append(c.url)
        }
        return removed
    }
}

/// Directories being deleted on one background thread, in order. `waitForAll()` returns once
/// none is left; it runs when the process exits normally (an `atexit` handler), so a finished
/// run leaves no `.deleting` directory behind.
public final class BackgroundDeletions: @unchecked Sendable {
    public static let shared = BackgroundDeletions()
    private let condition = NSCondition()
    private var queue: [URL] = []
    private var running = false

    private init() {
        atexit { BackgroundDeletions.shared.waitForAll() }
    }

    func remove(_ url: URL) {
        condition.lock()
        defer { condition.unlock() }
        queue.append(url)
        guard !running else { return }
        running = true
        let thread = Thread { [self] in
            while true {
                condition.lock()
                guard !queue.isEmpty else {
                    running = false
                    condition.broadcast()
                    condition.unlock()
                    return
                }
                let next = queue.removeFirst()
                condition.unlock()
                try? FileManager.default.removeItem(at: next)
            }
        }
        thread.name = "tessera-checkpoint-deletions"
        thread.start()
    }

    /// Blocks until every queued directory is deleted.
    public func waitForAll() {
        condition.lock()
        defer { condition.unlock() }
        while running { condition.wait() }
    }
}
