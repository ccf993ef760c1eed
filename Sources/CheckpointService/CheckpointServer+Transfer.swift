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
        do {
            for (index, url) in incoming.enumerated() {
                header.files[index].sha256 = try receiveFile(header.files[index], into: committed ? nil : url, step: step, from: connection, what: what)
            }
            let end = try connection.receive(while: "waiting for the end of \(what)'s part")
            guard end.type == .partEnd else {
                throw CheckpointServiceError.badFrame(address: connection.address, reason: "a \(end.type) frame where \(what)'s part should end")
            }
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
    /// the header left its SHA-256 empty, the `fileEnd` frame giving it. Returns the SHA-256,
    /// which the bytes matched.
    private func receiveFile(_ file: PartFileEntry, into url: URL?, step: Int, from connection: ServiceConnection, what: String) throws -> String {
        var fd: Int32?
        do { fd = try url.map(DurableFiles.create) } catch where isComplete(step) { fd = nil }
        var hasher = SHA256()
        var remaining = file.size
        do {
            while remaining > 0 {
                let frame = try connection.receive(while: "receiving \(file.name) of \(what) (\(remaining) bytes to go)")
                guard frame.type == .fileData, !frame.payload.isEmpty, frame.payload.count <= remaining else {
                    throw CheckpointServiceError.badFrame(address: connection.address,
                                                          reason: "a \(frame.type) frame of \(frame.payload.count) bytes where \(remaining) bytes of \(file.name) of \(what) should come")
                }
                hasher.update(data: frame.payload)
                if let fd, let url { try frame.payload.withUnsafeBytes { try DurableFiles.write(fd, $0, to: url) } }
                remaining -= frame.payload.count
            }
        } catch {
            if let fd { close(fd) }
            throw error
        }
        if let fd, let url { try DurableFiles.finish(fd, url) }
        let actual = CheckpointCommit.hex(hasher.finalize())
        var announced = file.sha256
        if announced.isEmpty {   // sent after the bytes, which the client hashed as it sent them
            let end = try connection.receive(while: "waiting for the SHA-256 of \(file.name) of \(what)")
            guard end.type == .fileEnd, end.payload.count <= ServiceLimits.maxJSONBytes,
                  let sum = try? JSONDecoder().decode(FileEnd.self, from: Data(end.payload)), CheckpointLayout.isSHA256(sum.sha256) else {
                throw CheckpointServiceError.badFrame(address: connection.address,
                                                      reason: "a \(end.type) frame where the SHA-256 of \(file.name) of \(what) should come")
            }
            announced = sum.sha256
        }
        guard actual == announced else {
            throw CheckpointServiceError.invalidPart(reason: "\(what): the bytes of \(file.name) have SHA-256 \(actual), not the announced \(announced)")
        }
        return actual
    }

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
                try connection.send(Frame(.fileData, Array(chunk)), while: "sending \(name) of step \(request.step)")
            }
            try connection.send(.fileEnd, json: FileEnd(sha256: CheckpointCommit.hex(hasher.finalize())), while: "sending \(name) of step \(request.step)")
        }
        try connection.send(.ok, json: GetRequest(step: request.step), while: "ending step \(request.step)")
    }
}
