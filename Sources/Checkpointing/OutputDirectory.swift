import Foundation

/// Where a command writes a new directory (a soup's run directory, an export).
public enum OutputDirectory {
    /// Throws `SoupError.outputNotEmpty` unless `output` is absent or an empty directory: an
    /// existing checkpoint, export or anything else there is never overwritten.
    public static func ensureEmpty(_ output: URL) throws {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: output.path, isDirectory: &isDirectory) else { return }
        let entries = (try? fm.contentsOfDirectory(atPath: output.path)) ?? ["?"]
        if !isDirectory.boolValue || !entries.isEmpty { throw SoupError.outputNotEmpty(path: output.path) }
    }
}
