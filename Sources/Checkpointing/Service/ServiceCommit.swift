import Crypto
import Foundation

/// The service's commit of a complete checkpoint, in one place so that the shared commit
/// routine of the directory sink can replace it: the parts' files are already durable in the
/// hidden assembly directory; this writes `checksums.json` (SHA-256 hex per file name, keys
/// sorted), then `DONE` last, fsyncs, and renames the directory to `step-NNNNNNNN`.
///
/// `DONE` reads `step N` and, when known, `validation_loss X` on the next line (what best-K
/// retention ranks by).
public enum ServiceCommit {
    public static let checksumsName = "checksums.json"
    public static let doneName = "DONE"

    /// Commits `assembly` (which must hold exactly the files of `checksums`) as the checkpoint
    /// of `step` under `root`; returns the committed directory. A directory already there for
    /// the step is an error (checkpoints are never overwritten).
    @discardableResult
    public static func commit(assembly: URL, step: Int, checksums: [String: String], validationLoss: Double?, root: URL) throws -> URL {
        let final = root.appendingPathComponent(CheckpointStore.directoryName(step: step))
        guard !FileManager.default.fileExists(atPath: final.path) else {
            throw CheckpointError.writeFailed(path: final.path, reason: "a checkpoint of step \(step) is already there; it is never overwritten")
        }
        let json = try JSONSerialization.data(withJSONObject: checksums, options: [.prettyPrinted, .sortedKeys])
        try DurableFiles.write(json, to: assembly.appendingPathComponent(checksumsName))
        try DurableFiles.syncDirectory(assembly)
        var done = "step \(step)\n"
        if let loss = validationLoss { done += "validation_loss \(loss)\n" }
        try DurableFiles.write(Data(done.utf8), to: assembly.appendingPathComponent(doneName))
        try DurableFiles.syncDirectory(assembly)
        try DurableFiles.rename(assembly, to: final)
        return final
    }

    /// The validation loss recorded in a committed checkpoint's `DONE`, if any.
    public static func validationLoss(of directory: URL) -> Double? {
        guard let text = try? String(contentsOf: directory.appendingPathComponent(doneName), encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("validation_loss ") {
            return Double(line.dropFirst("validation_loss ".count))
        }
        return nil
    }

    /// Checks a directory against its `checksums.json`: every listed file present with its
    /// SHA-256, and no other file besides `checksums.json` and `DONE`. Throws
    /// `CheckpointError.corrupt` naming the first bad file.
    public static func verify(_ directory: URL) throws {
        let listURL = directory.appendingPathComponent(checksumsName)
        guard let data = FileManager.default.contents(atPath: listURL.path),
              let list = try? JSONSerialization.jsonObject(with: data) as? [String: String] else {
            throw CheckpointError.corrupt(path: listURL.path, reason: "missing or not a JSON object of SHA-256 sums")
        }
        for (name, expected) in list.sorted(by: { $0.key < $1.key }) {
            let url = directory.appendingPathComponent(name)
            guard let actual = try sha256Hex(file: url) else {
                throw CheckpointError.corrupt(path: url.path, reason: "listed in \(checksumsName) but missing")
            }
            guard actual == expected else { throw CheckpointError.corrupt(path: url.path, reason: "SHA-256 \(actual) does not match \(expected) in \(checksumsName)") }
        }
        let present = Set(((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []))
        if let extra = present.subtracting(list.keys).subtracting([checksumsName, doneName]).sorted().first {
            throw CheckpointError.corrupt(path: directory.appendingPathComponent(extra).path, reason: "not listed in \(checksumsName)")
        }
    }

    public static func sha256Hex(_ data: Data) -> String { hex(SHA256.hash(data: data)) }

    /// SHA-256 of a file read in chunks; nil when it does not exist.
    public static func sha256Hex(file url: URL) throws -> String? {
        guard let handle = try? FileHandle(forReadingFrom: url) else { return nil }
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try handle.read(upToCount: Frame.chunkBytes), !chunk.isEmpty { hasher.update(data: chunk) }
        return hex(hasher.finalize())
    }

    static func hex(_ digest: some Sequence<UInt8>) -> String { digest.map { String(format: "%02x", $0) }.joined() }
}
