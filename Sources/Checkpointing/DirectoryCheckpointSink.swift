import Foundation

/// The checkpoint destination as a directory every rank can write (a shared file system, or
/// one node). Each rank writes its files durably into `root/.step-0000000N.partial/` and then
/// a marker; rank 0, after its own files, waits for every rank's marker and commits
/// (`CheckpointCommit`), then applies `retention`. The markers never reach the committed
/// checkpoint, so the files are the same as the checkpoint service writes.
///
/// Called from one writer thread per rank; blocking there is the point.
public final class DirectoryCheckpointSink: CheckpointSink {
    public let root: URL
    /// How long rank 0 waits for the other ranks' markers.
    public let timeoutSeconds: Double
    public let retention: CheckpointRetention
    /// How often rank 0 looks for markers while it waits.
    public var pollSeconds = 0.005

    public init(root: URL, timeoutSeconds: Double = 300, retention: CheckpointRetention = CheckpointRetention()) {
        self.root = root; self.timeoutSeconds = timeoutSeconds; self.retention = retention
    }

    public var store: CheckpointStore { CheckpointStore(root: root) }
    public var location: String { root.path }
    public var directory: URL? { root }

    /// On the owner: clears what a stopped run left (`removeUnfinished`).
    public func prepare(owner: Bool) throws -> [String] { owner ? removeUnfinished() : [] }

    /// Rank 0's receipt is the committed step (it commits once every rank's marker is in);
    /// another rank's says its part is durable.
    @discardableResult
    public func deliver(_ part: CheckpointPart) throws -> CheckpointReceipt {
        let partial = root.appendingPathComponent(CheckpointLayout.partialName(step: part.step))
        do { try FileManager.default.createDirectory(at: partial, withIntermediateDirectories: true) } catch {
            throw CheckpointError.writeFailed(path: partial.path, reason: error.localizedDescription)
        }
        for file in part.files {
            guard !file.name.contains("/"), !file.name.hasPrefix("."), !file.name.isEmpty else {
                throw CheckpointError.writeFailed(path: partial.appendingPathComponent(file.name).path, reason: "not a plain file name")
            }
        }
        // The bytes written are hashed in memory, on a second thread while this one writes and
        // fsyncs them: the commit records these sums instead of reading the files back.
        var sums: [String: String] = [:]
        var writeError: Error?
        DispatchQueue.concurrentPerform(iterations: 2) { half in
            if half == 0 {
                do {
                    for file in part.files { try CheckpointCommit.writeDurably(file.data, to: partial.appendingPathComponent(file.name)) }
                } catch { writeError = error }
            } else {
                sums = Dictionary(part.files.map { ($0.name, CheckpointCommit.sha256($0.data)) }, uniquingKeysWith: { first, _ in first })
            }
        }
        if let writeError { throw writeError }
        let marker = try JSONSerialization.data(withJSONObject: ["rank": part.rank, "ranks": part.ranks, "files": part.files.map(\.name), "sha256": sums])
        try CheckpointCommit.writeDurably(marker, to: partial.appendingPathComponent(CheckpointLayout.marker(rank: part.rank)))
        guard part.rank == 0 else { return CheckpointReceipt(step: part.step, committed: false, location: location) }
        try waitForMarkers(in: partial, ranks: part.ranks)
        let delivered = try removeUndelivered(in: partial, ranks: part.ranks)
        let final = try CheckpointCommit.commit(partial: partial, root: root, step: part.step, knownSums: delivered)
        retention.apply(root: root)
        return CheckpointReceipt(step: part.step, committed: true, location: location, directory: final)
    }

    /// Waits until every rank's marker is in `partial`; the error names the ranks missing.
    func waitForMarkers(in partial: URL, ranks: Int) throws {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while true {
            let missing = (0..<ranks).filter {
                !FileManager.default.fileExists(atPath: partial.appendingPathComponent(CheckpointLayout.marker(rank: $0)).path)
            }
            if missing.isEmpty { return }
            if Date() >= deadline { throw CheckpointError.partsMissing(path: partial.path, ranks: missing, seconds: timeoutSeconds) }
            Thread.sleep(forTimeInterval: pollSeconds)
        }
    }

    /// Deletes files of `partial` no rank's marker lists (leftovers of an earlier attempt at
    /// the same step), so only this save's files are committed. Returns the SHA-256s the
    /// markers give for the delivered files.
    @discardableResult
    func removeUndelivered(in partial: URL, ranks: Int) throws -> [String: String] {
        var delivered = Set<String>()
        var sums: [String: String] = [:]
        for rank in 0..<ranks {
            let url = partial.appendingPathComponent(CheckpointLayout.marker(rank: rank))
            guard let data = FileManager.default.contents(atPath: url.path),
                  let marker = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let files = marker["files"] as? [String] else {
                throw CheckpointError.corrupt(path: url.path, reason: "not a delivery marker")
            }
            delivered.formUnion(files)
            for (name, sum) in marker["sha256"] as? [String: String] ?? [:] where files.contains(name) && CheckpointLayout.isSHA256(sum) {
                sums[name] = sum
            }
        }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: partial.path)) ?? []
        where !CheckpointLayout.isMarker(name) && !delivered.contains(name) {
            try? FileManager.default.removeItem(at: partial.appendingPathComponent(name))
        }
        return sums
    }

    public func latestStep() throws -> Int? { store.complete().last?.step }

    public func fetch(step: Int) throws -> URL {
        let url = root.appendingPathComponent(CheckpointLayout.directoryName(step: step))
        guard FileManager.default.fileExists(atPath: url.appendingPathComponent(CheckpointLayout.done).path) else {
            throw CheckpointError.missing(path: url.path, hint: "no complete checkpoint of step \(step) under \(root.path)")
        }
        return url
    }

    /// Deletes the partial directories a stopped run left behind (their markers would
    /// otherwise count for a new save of the same step), and finishes or undoes a replacement
    /// of a step cut short (`CheckpointCommit.recoverReplaced`: the old copy is restored when it
    /// is the only one). Call on one rank before anyone saves, holding the run directory.
    /// Returns what it did about replacements, one line each.
    @discardableResult
    public func removeUnfinished() -> [String] {
        let recovered = CheckpointCommit.recoverReplaced(root: root)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        for name in names where name.hasPrefix(".step-") && !name.hasSuffix(".replaced") {
            try? FileManager.default.removeItem(at: root.appendingPathComponent(name))
        }
        return recovered
    }
}
