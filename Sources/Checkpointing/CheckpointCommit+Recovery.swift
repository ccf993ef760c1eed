import Foundation

extension CheckpointCommit {
    /// Deals with the `.step-N.replaced` directories under `root` that a commit replacing an
    /// already committed step N left when its process died. Such a commit moves the old
    /// `step-N` aside to `.step-N.replaced`, renames the new one into place, then deletes the
    /// old one; so:
    /// - `step-N` complete (`DONE`): the new copy made it, the old one is deleted;
    /// - no `step-N`: the process died between the two renames, and the old copy is the only
    ///   copy of step N: it is renamed back when it verifies, deleted otherwise (never loadable);
    /// - a `step-N` without `DONE` (not written by a commit): both are left alone.
    /// Call before anything writes under `root` (a restarted service, or rank 0 before the
    /// first save). Returns one line per directory, for logs.
    @discardableResult
    public static func recoverReplaced(root: URL) -> [String] {
        let fm = FileManager.default
        var lines: [String] = []
        for name in ((try? fm.contentsOfDirectory(atPath: root.path)) ?? []).sorted() {
            guard name.hasPrefix("."), name.hasSuffix(".replaced"),
                  let step = CheckpointLayout.step(ofDirectory: String(name.dropFirst().dropLast(".replaced".count))),
                  name == CheckpointLayout.replacedName(step: step) else { continue }
            let old = root.appendingPathComponent(name)
            let current = root.appendingPathComponent(CheckpointLayout.directoryName(step: step))
            if fm.fileExists(atPath: current.appendingPathComponent(CheckpointLayout.done).path) {
                try? fm.removeItem(at: old)
                lines.append("removed \(name): the previous copy of step \(step), replaced by a complete one")
            } else if fm.fileExists(atPath: current.path) {
                lines.append("left \(name) and \(current.lastPathComponent) alone: step \(step) is there without \(CheckpointLayout.done)")
            } else if fm.fileExists(atPath: old.appendingPathComponent(CheckpointLayout.done).path),
                      (try? CheckpointStore.verifyChecksums(old)) != nil {
                do {
                    try fm.moveItem(at: old, to: current)
                    try? fsync(root)
                    lines.append("restored step \(step) from \(name): a commit replacing it was interrupted")
                } catch {
                    lines.append("could not restore step \(step) from \(name) (\(error.localizedDescription)); rename it to \(current.lastPathComponent) by hand")
                }
            } else {
                try? fm.removeItem(at: old)
                lines.append("removed \(name): an interrupted replacement of step \(step) that does not verify")
            }
        }
        return lines
    }
}
