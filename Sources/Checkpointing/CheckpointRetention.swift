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
    /// leaves a half-deleted directory that looks complete.
    @discardableResult
    public func apply(root: URL) -> [URL] {
        let fm = FileManager.default
        let complete = CheckpointStore(root: root).complete()
        let keep = kept(complete.map { ($0.step, CheckpointStore.validationLoss(of: $0.url)) })
        var removed: [URL] = []
        for c in complete where !keep.contains(c.step) {
            let doomed = root.appendingPathComponent("." + c.url.lastPathComponent + ".deleting")
            guard (try? fm.moveItem(at: c.url, to: doomed)) != nil else { continue }
            try? fm.removeItem(at: doomed)
            removed.append(c.url)
        }
        return removed
    }
}
