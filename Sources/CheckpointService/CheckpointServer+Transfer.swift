import Checkpointing
import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension CheckpointServer {
    /// A part's upload: its files go to `ID-NAME` in the step's incoming directory (outside the
    /// assembly), hashed and fsynced as they arrive; once all arrived and matched their SHA-256,
    /// they are renamed into the assembly, the part's manifest is written, and the client is told the part is durable
    /// (and whether it completed the step, which is then committed).
    func receivePart(_ frame: Frame, from connection: ServiceConnection, id: Int) throws {
        var header = try PartHeader.decode(frame.payload, from: "a part from \(connection.address)", sumsFollow: true)
        let step = header.step, what = "step \(header.step) rank \(header.rank)"
        try checkPathLengths(header, id: id)
        lock.lock()
        let committed = isComplete(step)
        if !committed, let newest = CheckpointStore(root: root).complete().last?.step, step < newest {
            lock.unlock()
            throw CheckpointServiceError.invalidPart(reason: "\(what): step \(newest) is already complete, so step \(step) would never be committed")
        }
        do {
            if !committed {
                try FileManager.default.createDirectory(at: assemblyURL(step), withIntermediateDirectories: true)
                try FileManager.default.createDirectory(at: manifestsURL(step), withIntermediateDirectories: true)
                try FileManager.default.createDirectory(at: incomingURL(step), withIntermediateDirectories: true)
            }
        } catch {
            lock.unlock()
            throw CheckpointError.writeFailed(path: assemblyURL(step).path, reason: error.localizedDescription)
        }
        lock.unlock()

        let incoming = header.files.map { incomingURL(step).appendingPathComponent("\(id)-\($0.name)") }
        // Files written but not yet fsynced: their fsyncs wait for the part's end (at most
        // `unsyncedFiles` open at once), so one file's disk writing overlaps the next's arrival.
        var unsynced: [(fd: Int32, url: URL)] = []
        defer { for file in unsynced { close(file.fd) } }
        do {
            for (index, url) in incoming.enumerated() {
                header.files[index].sha256 = try receiveFile(header.files[index], into: committed ? nil : url, step: step, from: connection,
                                                             what: what, unsynced: &unsynced)
            }
            let end = try connection.receive(while: "waiting for the end of \(what)'s part")
            guard end.type == .partEnd else {
                throw CheckpointServiceError.badFrame(address: connection.address, reason: "a \(end.type) frame where \(what)'s part should end")
            }
            while !unsynced.isEmpty { let file = unsynced.removeFirst(); try DurableFiles.finish(file.fd, file.url) }
            lock.lock()
            defer { lock.unlock() }
            let receipt = try acknowledge(header, incoming: incoming)
            if receipt.committed, isComplete(step) {   // committed meanwhile: what this part left is of no use
                for url in incoming { try? FileManager.default.removeItem(at: url) }
                rmdir(incomingURL(step).path)   // unless another part is still arriving
            }
            try connection.send(.ok, json: receipt, while: "acknowledging \(what)")
        } catch {
            for url in incoming { try? FileManager.default.removeItem(at: url) }
            if isComplete(step) { rmdir(incomingURL(step).path) }
            throw error
        }
    }

    /// Whether `parts` (by rank, each of `ranks` ranks) are every rank's: counted, never a set of
    /// `0..<ranks` built from a number a peer sent.
    static func isComplete(_ parts: [Int: PartHeader], ranks: Int) -> Bool {
        parts.count == ranks && parts.allSatisfy { rank, part in part.ranks == ranks && (0..<ranks).contains(rank) }
    }

    /// Refuses a part whose files' paths under this root (while arriving, `ID-NAME`, and once
    /// committed) would be longer than `ServiceLimits.maxPathBytes`: refused up front, not
    /// acknowledged and then lost on disk.
    func checkPathLengths(_ header: PartHeader, id: Int) throws {
        for file in header.files {
            let longest = max(incomingURL(header.step).appendingPathComponent("\(id)-\(file.name)").path.utf8.count,
                              assemblyURL(header.step).appendingPathComponent(file.name).path.utf8.count)
            guard longest <= ServiceLimits.maxPathBytes else {
                throw CheckpointServiceError.invalidPart(reason: "step \(header.step) rank \(header.rank): the path of \(file.name) under \(root.path) would be \(longest) bytes, over the \(ServiceLimits.maxPathBytes)-byte limit; use a shorter --root or file name")
            }
        }
    }

    func isComplete(_ step: Int) -> Bool {
        FileManager.default.fileExists(atPath: finalURL(step).appendingPathComponent(CheckpointLayout.done).path)
    }

    /// Reads one file's `fileData` frames, writing them to `url` (nil: only checking them; so
    /// too when `step` was committed meanwhile and its incoming directory is gone), and, when
    /// the header left its SHA-256 empty, the `fileEnd` frame giving it (or leaving it to us,
    /// empty: the sealed channel authenticated every byte). Returns the SHA-256 of the bytes
    /// that arrived, computed on a second thread while this one reads, opens and writes (and starts the
    /// disk writing every `DurableFiles.writebackBytes`); the file, written, joins `unsynced`,
    /// whose fsyncs `receivePart` does at the part's end (they then wait for little); a sum
    /// the client announced must match it.
    private func receiveFile(_ file: PartFileEntry, into url: URL?, step: Int, from connection: ServiceConnection, what: String,
                             unsynced: inout [(fd: Int32, url: URL)]) throws -> String {
        var fd: Int32?
        do { fd = try url.map(DurableFiles.create) } catch where isComplete(step) { fd = nil }
        let hasher = StreamHasher()
        var remaining = file.size, flushed = 0
        do {
            while remaining > 0 {
                let (type, payload) = try connection.receiveRecord(while: "receiving \(file.name) of \(what) (\(remaining) bytes to go)")
                guard type == .fileData, !payload.isEmpty, payload.count <= remaining else {
                    throw CheckpointServiceError.badFrame(address: connection.address,
                                                          reason: "a \(type) frame of \(payload.count) bytes where \(remaining) bytes of \(file.name) of \(what) should come")
                }
                hasher.add(payload)
                if let fd, let url {
                    try payload.withUnsafeBytes { try DurableFiles.write(fd, $0, to: url) }
                    let written = file.size - remaining + payload.count
                    if written - flushed >= DurableFiles.writebackBytes || payload.count == remaining {
                        DurableFiles.startWriteback(fd, offset: flushed, count: written - flushed)
                        flushed = written
                    }
                }
                remaining -= payload.count
            }
        } catch {
            _ = hasher.finish()
            if let fd { close(fd) }
            throw error
        }
        let actual = hasher.finish()
        if let fd, let url {
            unsynced.append((fd, url))
            if unsynced.count > Self.unsyncedFiles { let oldest = unsynced.removeFirst(); try DurableFiles.finish(oldest.fd, oldest.url) }
        }
        var announced = file.sha256
        if announced.isEmpty {   // sent after the bytes, or left to us
            let end = try connection.receive(while: "waiting for the SHA-256 of \(file.name) of \(what)")
            guard end.type == .fileEnd, end.payload.count <= ServiceLimits.maxJSONBytes,
                  let sum = try? JSONDecoder().decode(FileEnd.self, from: Data(end.payload)), sum.sha256.isEmpty || CheckpointLayout.isSHA256(sum.sha256) else {
                throw CheckpointServiceError.badFrame(address: connection.address,
                                                      reason: "a \(end.type) frame where the SHA-256 of \(file.name) of \(what) should come")
            }
            announced = sum.sha256.isEmpty ? actual : sum.sha256
        }
        guard actual == announced else {
            throw CheckpointServiceError.invalidPart(reason: "\(what): the bytes of \(file.name) have SHA-256 \(actual), not the announced \(announced)")
        }
        return actual
    }

    /// Files of one part written and not yet fsynced, at most (descriptors held per connection).
    static let unsyncedFiles = 8

    /// With the lock held: makes the received part durable and commits the step when it was the last.
    private func acknowledge(_ header: PartHeader, incoming: [URL]) throws -> PartReceipt {
        let step = header.step, what = "step \(header.step) rank \(header.rank)"
        if isComplete(step) {
            let list = (try? CheckpointStore.checksums(finalURL(step))) ?? [:]
            if let differing = header.files.first(where: { list[$0.name] != $0.sha256 }) {
                throw CheckpointServiceError.invalidPart(reason: "\(what): step \(step) is already committed, with a different \(differing.name)")
            }
            return PartReceipt(step: step, rank: header.rank, committed: true)
        }
        let fm = FileManager.default
        guard fm.fileExists(atPath: assemblyURL(step).path), fm.fileExists(atPath: manifestsURL(step).path) else {
            throw CheckpointServiceError.invalidPart(reason: "\(what): dropped while arriving, a newer step is complete")
        }
        var parts = try manifests(step)
        let names = Set(header.files.map(\.name))
        for (rank, other) in parts where rank != header.rank {
            guard other.ranks == header.ranks else {
                throw CheckpointServiceError.invalidPart(reason: "\(what) says the step has \(header.ranks) parts, rank \(rank)'s said \(other.ranks)")
            }
            if let clash = other.files.map(\.name).first(where: names.contains) {
                throw CheckpointServiceError.invalidPart(reason: "\(what): file \(clash) is already in rank \(rank)'s part")
            }
        }
        let assembly = assemblyURL(step)
        for old in parts[header.rank]?.files ?? [] where !names.contains(old.name) {   // a redelivery with other files
            try? fm.removeItem(at: assembly.appendingPathComponent(old.name))
        }
        for (file, url) in zip(header.files, incoming) {
            guard rename(url.path, assembly.appendingPathComponent(file.name).path) == 0 else {
                throw DurableFiles.failure(assembly.appendingPathComponent(file.name), "rename")
            }
        }
        try DurableFiles.syncDirectory(assembly)
        try DurableFiles.replace(manifestsURL(step).appendingPathComponent("rank-\(header.rank).json"), with: JSONEncoder().encode(header))
        parts[header.rank] = header
        let bytes = header.files.reduce(0) { $0 + $1.size }
        log("\(what): part durable (\(header.files.count) files, \(bytes) bytes); have ranks \(parts.keys.sorted()) of \(header.ranks)")
        guard Self.isComplete(parts, ranks: header.ranks) else { return PartReceipt(step: step, rank: header.rank, committed: false) }
        try commit(step, parts)
        return PartReceipt(step: step, rank: header.rank, committed: true)
    }

    /// A complete checkpoint's files, each announced, streamed in chunks and closed with its SHA-256.
    func sendCheckpoint(_ frame: Frame, to connection: ServiceConnection) throws {
        guard frame.payload.count <= ServiceLimits.maxJSONBytes,
              let request = try? JSONDecoder().decode(GetRequest.self, from: Data(frame.payload)) else {
            throw CheckpointServiceError.badFrame(address: connection.address, reason: "a get request that is not JSON of one")
        }
        try ServiceLimits.check("step", request.step, in: 0...CheckpointLayout.maxStep, "a get request from \(connection.address)")
        let directory = finalURL(request.step)
        guard isComplete(request.step) else {
            let have = CheckpointStore(root: root).complete().map { String($0.step) }
            throw CheckpointError.missing(path: directory.path, hint: "step \(request.step) is not a complete checkpoint here; complete steps: \(have.isEmpty ? "none" : have.joined(separator: ", "))")
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { !$0.hasPrefix(".") }.sorted()
        for name in names {
            let url = directory.appendingPathComponent(name)
            let handle = try FileHandle(forReadingFrom: url)
            defer { try? handle.close() }
            let size = try handle.seekToEnd()
            try handle.seek(toOffset: 0)
            try connection.send(.fileBegin, json: FileBegin(name: name, size: Int(size)), while: "sending \(name) of step \(request.step)")
            var hasher = SHA256()
            while let chunk = try handle.read(upToCount: Frame.chunkBytes), !chunk.isEmpty {
                hasher.update(data: chunk)
                try chunk.withUnsafeBytes { try connection.send(.fileData, $0, while: "sending \(name) of step \(request.step)") }
            }
            try connection.send(.fileEnd, json: FileEnd(sha256: CheckpointCommit.hex(hasher.finalize())), while: "sending \(name) of step \(request.step)")
        }
        try connection.send(.ok, json: GetRequest(step: request.step), while: "ending step \(request.step)")
    }
}

/// The SHA-256 of a stream of chunks, computed on a thread of its own while the caller goes on
/// reading and writing; at most `depth` chunks wait for it (memory bounded at `depth` frames).
final class StreamHasher: @unchecked Sendable {
    static let depth = 4
    private let condition = NSCondition()
    private var waiting: [Data] = []
    private var ended = false
    private var digest: String?

    init() {
        let thread = Thread { [self] in run() }
        thread.name = "sha256"
        thread.start()
    }

    /// Hands `chunk` to the hashing thread; waits while `depth` chunks are already waiting.
    func add(_ chunk: Data) {
        condition.lock()
        defer { condition.unlock() }
        while waiting.count >= Self.depth { condition.wait() }
        waiting.append(chunk)
        condition.broadcast()
    }

    /// The hex SHA-256 of every chunk added, once they are all hashed; the thread then ends.
    func finish() -> String {
        condition.lock()
        defer { condition.unlock() }
        ended = true
        condition.broadcast()
        while digest == nil { condition.wait() }
        return digest!
    }

    private func run() {
        var hasher = SHA256()
        while true {
            condition.lock()
            while waiting.isEmpty, !ended { condition.wait() }
            guard !waiting.isEmpty else {
                digest = CheckpointCommit.hex(hasher.finalize())
                condition.broadcast()
                condition.unlock()
                return
            }
            let chunk = waiting.removeFirst()
            condition.broadcast()
            condition.unlock()
            hasher.update(data: chunk)
        }
    }
}
