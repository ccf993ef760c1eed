import Checkpointing
import Foundation

/// `metrics.jsonl`: one JSON object per line, one file per run.
final class MetricsLog {
    let handle: FileHandle
    let path: String

    init(url: URL, append: Bool) throws {
        path = url.path
        let fm = FileManager.default
        do {
            try fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            if !append || !fm.fileExists(atPath: url.path) { _ = fm.createFile(atPath: url.path, contents: nil) }
            handle = try FileHandle(forWritingTo: url)
            handle.seekToEndOfFile()
        } catch {
            throw CheckpointError.writeFailed(path: url.path, reason: error.localizedDescription)
        }
    }

    func write(_ object: [String: Any]) throws {
        var line = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        line.append(0x0A)
        do { try handle.write(contentsOf: line) } catch {
            throw CheckpointError.writeFailed(path: path, reason: error.localizedDescription)
        }
    }

    deinit { try? handle.close() }
}
