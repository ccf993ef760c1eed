import Checkpointing
import Foundation

/// `metrics.jsonl`: one JSON object per line, one file per run.
public final class MetricsLog {
    let handle: FileHandle
    let path: String

    /// `append`: continue the file (a resumed run). `resumedAt`: the step the run resumed from;
    /// records of later steps are dropped first (a run that died after its last checkpoint
    /// logged them, and the resumed run logs them again), and so is a line a kill cut short.
    init(url: URL, append: Bool, resumedAt: Int? = nil) throws {
        path = url.path
        let fm = FileManager.default
        do {
            try fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            if !append || !fm.fileExists(atPath: url.path) { _ = fm.createFile(atPath: url.path, contents: nil) }
            if append, let resumedAt { try Self.dropRecords(after: resumedAt, in: url) }
            handle = try FileHandle(forWritingTo: url)
            handle.seekToEndOfFile()
        } catch let error as CheckpointError {
            throw error
        } catch {
            throw CheckpointError.writeFailed(path: url.path, reason: error.localizedDescription)
        }
    }

    /// Rewrites `url` (durably, under a temporary name) without the records of steps after
    /// `step` and without lines that are not JSON objects; leaves it alone when there are none.
    static func dropRecords(after step: Int, in url: URL) throws {
        guard let data = FileManager.default.contents(atPath: url.path) else { return }
        let lines = data.split(separator: 0x0A, omittingEmptySubsequences: true)
        let kept = lines.filter { line in
            guard let record = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { return false }
            return (record["step"] as? Int).map { $0 <= step } ?? true
        }
        guard kept.count != lines.count || (!data.isEmpty && data.last != 0x0A) else { return }
        var text = Data()
        for line in kept { text.append(contentsOf: line); text.append(0x0A) }
        try CheckpointCommit.writeDurably(text, to: url)
    }

    public func write(_ object: [String: Any]) throws {
        var line = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        line.append(0x0A)
        do { try handle.write(contentsOf: line) } catch {
            throw CheckpointError.writeFailed(path: path, reason: error.localizedDescription)
        }
    }

    deinit { try? handle.close() }
}
