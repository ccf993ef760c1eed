import Crypto
import Foundation

/// Turns a directory holding every rank's files into a committed checkpoint, the same way
/// whoever collected the parts (the directory sink on rank 0, or the checkpoint service):
/// the markers removed, every file's SHA-256 in `checksums.json`, every file and the directory
/// fsynced, `DONE` written last, and the directory renamed to `step-0000000N` in one step. A
/// crash at any point leaves either the previous state or the complete checkpoint.
public enum CheckpointCommit {
    /// Commits `partial` (usually `root/.step-0000000N.partial`) as `root/step-0000000N` and
    /// returns that URL. Checks first that rank 0's metadata files are there and that every
    /// file the index names is. Hidden names (the ranks' markers, temporaries) are deleted,
    /// never committed. A checkpoint of the same step already committed is replaced
    /// only once the new one is complete.
    /// `knownSums`: SHA-256s of files whose writer hashed the bytes it wrote (a rank from its
    /// memory, the service as they arrived): recorded as they are instead of reading the file
    /// back, which was most of a save's time. Files without one are read and hashed here.
    @discardableResult
    public static func commit(partial: URL, root: URL, step: Int, knownSums: [String: String] = [:]) throws -> URL {
        let fm = FileManager.default
        let names: [String]
        do { names = try fm.contentsOfDirectory(atPath: partial.path) } catch {
            throw CheckpointError.missing(path: partial.path, hint: "no part of checkpoint step \(step) was delivered")
        }
        // Markers, and any other hidden name (a temporary of a write that never finished), are
        // not files of the checkpoint: they never reach it.
        for hidden in names where hidden.hasPrefix(".") {
            try remove(partial.appendingPathComponent(hidden))
        }
        let files = names.filter { !$0.hasPrefix(".") && $0 != CheckpointLayout.checksums && $0 != CheckpointLayout.done }.sorted()
        try checkStructure(partial, files: Set(files))
        var sums: [String: String] = [:]
        for name in files {
            let url = partial.appendingPathComponent(name)
            sums[name] = try knownSums[name] ?? sha256(of: url)
            try fsync(url)
        }
        let manifest: [String: Any] = ["algorithm": "sha256", "step": step, "files": sums]
        try writeDurably(JSONSerialization.data(withJSONObject: manifest, options: [.prettyPrinted, .sortedKeys]),
                         to: partial.appendingPathComponent(CheckpointLayout.checksums))
        try writeDurably(Data("step \(step)\n".utf8), to: partial.appendingPathComponent(CheckpointLayout.done))
        try fsync(partial)
        let final = root.appendingPathComponent(CheckpointLayout.directoryName(step: step))
        do {
            if fm.fileExists(atPath: final.path) {
                // A rewrite of the same step: the old one stays whole until the new one is in place.
                let old = root.appendingPathComponent(CheckpointLayout.replacedName(step: step))
                if fm.fileExists(atPath: old.path) { try fm.removeItem(at: old) }
                try fm.moveItem(at: final, to: old)
                try fm.moveItem(at: partial, to: final)
                try? fm.removeItem(at: old)
            } else {
                try fm.moveItem(at: partial, to: final)
            }
            try fsync(root)
        } catch let error as CheckpointError {
            throw error
        } catch {
            throw CheckpointError.writeFailed(path: final.path, reason: error.localizedDescription)
        }
        return final
    }

    /// Rank 0's metadata files are present and every file the index names is.
    static func checkStructure(_ partial: URL, files: Set<String>) throws {
        for required in [CheckpointLayout.index, CheckpointLayout.huggingFaceConfig, CheckpointLayout.trainerState, CheckpointLayout.runConfig]
        where !files.contains(required) {
            throw CheckpointError.missing(path: partial.appendingPathComponent(required).path, hint: "rank 0's part of the checkpoint lacks it; nothing was committed")
        }
        let weightMap = try CheckpointIndex.read(partial).weightMap
        if let absent = Set(weightMap.values).sorted().first(where: { !files.contains($0) }) {
            throw CheckpointError.missing(path: partial.appendingPathComponent(absent).path,
                                          hint: "the index names it but no rank delivered it; nothing was committed")
        }
    }

    /// Writes `data` to `url` under a temporary name, fsyncs it and renames it into place, so
    /// `url` never holds part of the data. A failure (a full disk among them) names `url`.
    public static func writeDurably(_ data: Data, to url: URL) throws {
        let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp")
        func failed(_ reason: String) -> CheckpointError {
            try? FileManager.default.removeItem(at: temporary)
            return .writeFailed(path: url.path, reason: reason)
        }
        let descriptor = open(temporary.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard descriptor >= 0 else { throw failed(String(cString: strerror(errno))) }
        var problem: String?
        data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) in
            var done = 0
            while done < bytes.count {
                let n = write(descriptor, bytes.baseAddress! + done, bytes.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    problem = String(cString: strerror(errno)); return
                }
                done += n
            }
            if Foundation.fsync(descriptor) != 0 { problem = "fsync: " + String(cString: strerror(errno)) }
        }
        if close(descriptor) != 0, problem == nil { problem = String(cString: strerror(errno)) }
        if let problem { throw failed(problem) }
        guard rename(temporary.path, url.path) == 0 else { throw failed("rename: " + String(cString: strerror(errno))) }
    }

    /// Flushes a file or directory to the disk.
    public static func fsync(_ url: URL) throws {
        let descriptor = open(url.path, O_RDONLY)
        guard descriptor >= 0 else { throw CheckpointError.writeFailed(path: url.path, reason: "cannot open it to fsync (errno \(errno))") }
        defer { close(descriptor) }
        guard Foundation.fsync(descriptor) == 0 else { throw CheckpointError.writeFailed(path: url.path, reason: "fsync failed (errno \(errno))") }
    }

    /// The SHA-256 of a file, as lowercase hex, read in 8 MiB pieces into one buffer.
    public static func sha256(of url: URL) throws -> String {
        let descriptor = open(url.path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            if errno == ENOENT { throw CheckpointError.missing(path: url.path, hint: "the checkpoint lacks this file") }
            throw CheckpointError.corrupt(path: url.path, reason: "cannot be read (\(String(cString: strerror(errno))))")
        }
        defer { close(descriptor) }
        var hasher = SHA256()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 << 20, alignment: 64)
        defer { buffer.deallocate() }
        while true {
            let n = read(descriptor, buffer.baseAddress!, buffer.count)
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { throw CheckpointError.corrupt(path: url.path, reason: "cannot be read (\(String(cString: strerror(errno))))") }
            if n == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[..<n]))
        }
        return hex(hasher.finalize())
    }

    /// The SHA-256 of `data`, as lowercase hex (what `checksums.json` records for a file).
    public static func sha256(_ data: Data) -> String { hex(SHA256.hash(data: data)) }

    /// Bytes (a digest) as lowercase hex.
    public static func hex(_ digest: some Sequence<UInt8>) -> String { digest.map { String(format: "%02x", $0) }.joined() }

    private static func remove(_ url: URL) throws {
        do { try FileManager.default.removeItem(at: url) } catch {
            throw CheckpointError.writeFailed(path: url.path, reason: error.localizedDescription)
        }
    }
}

/// A checkpoint's `model.safetensors.index.json`: every model tensor → the file holding it,
/// and (written by Tessera) every tensor's whole shape.
public struct CheckpointIndex {
    public var weightMap: [String: String]
    public var shapes: [String: [Int]]

    public static func read(_ directory: URL) throws -> CheckpointIndex {
        let url = directory.appendingPathComponent(CheckpointLayout.index)
        guard let data = FileManager.default.contents(atPath: url.path),
              let index = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let weightMap = index["weight_map"] as? [String: String] else {
            throw CheckpointError.corrupt(path: url.path, reason: "missing or not a Hugging Face index (weight_map)")
        }
        let shapes = ((index["metadata"] as? [String: Any])?["shapes"] as? [String: [Int]]) ?? [:]
        return CheckpointIndex(weightMap: weightMap, shapes: shapes)
    }
}
