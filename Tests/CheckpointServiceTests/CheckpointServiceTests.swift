@testable import CheckpointService
import Checkpointing
import Foundation
import Networking
import TensorCore
import Testing
import _CheckpointTestSupport
import _TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Log lines of a service under test.
final class LogLines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func add(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
    /// Whether a line contains `text`, waiting up to 5 s for it (the service logs from its own threads).
    func contains(_ text: String) -> Bool {
        let end = Date(timeIntervalSinceNow: 5)
        while Date() < end {
            if all.contains(where: { $0.contains(text) }) { return true }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return false
    }
}

/// A service on 127.0.0.1 (a free port) over a temporary root, and clients of it.
final class ServiceFixture {
    static let token = "ckpt-test-token-2b7e151628aed2a6abf71588"
    let directory = TemporaryDirectory("tessera-ckpt-service")
    let log = LogLines()
    var server: CheckpointServer
    var root: URL { directory.url.appendingPathComponent("root") }

    init(retention: CheckpointRetention = CheckpointRetention(keepLast: 10, keepBest: 0), maxClients: Int = CheckpointServer.defaultMaxClients) throws {
        let log = self.log
        server = CheckpointServer(root: directory.url.appendingPathComponent("root"), token: Self.token, retention: retention,
                                  ioTimeout: 5, maxClients: maxClients, log: { log.add($0) })
        try server.start()
    }

    /// Stops this service and starts a new one over the same root (a restart).
    func restart(retention: CheckpointRetention = CheckpointRetention(keepLast: 10, keepBest: 0)) throws {
        server.stop()
        let log = self.log
        server = CheckpointServer(root: root, token: Self.token, retention: retention, ioTimeout: 5, log: { log.add($0) })
        try server.start()
    }

    func sink(token: String = ServiceFixture.token, cache: String = "cache") throws -> ServiceCheckpointSink {
        try ServiceCheckpointSink(address: ServiceAddress(host: "127.0.0.1", port: server.port), token: token,
                                  cacheDirectory: directory.url.appendingPathComponent(cache), connectTimeout: 2, ioTimeout: 5)
    }

    func committed(_ step: Int) -> URL { root.appendingPathComponent(CheckpointStore.directoryName(step: step)) }

    func files(in url: URL) -> [String: Data] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []
        return Dictionary(uniqueKeysWithValues: names.map { ($0, FileManager.default.contents(atPath: url.appendingPathComponent($0).path)!) })
    }

    deinit { server.stop(); directory.remove() }
}

/// Rank `rank`'s part of `step` (`SyntheticCheckpointPart`, random values): its model shard
/// holds `bytes` bytes of tensor (by default more than a frame's chunk, so it travels in
/// several), its optimizer shard twice that; rank 0's part adds the index naming every rank's
/// model file, `config.json`, `trainer_state.json` (with `loss`) and `run.yaml`.
func part(step: Int, rank: Int, ranks: Int, bytes: Int = Frame.chunkBytes + 12345, loss: Double? = nil) -> CheckpointPart {
    try! SyntheticCheckpointPart.make(step: step, rank: rank, ranks: ranks, floats: max(1, bytes / 4), validationLoss: loss,
                                      seed: UInt64.random(in: 0...UInt64.max))
}

/// Every file of the parts, by name.
func filesOf(_ parts: [CheckpointPart]) -> [String: Data] {
    var files: [String: Data] = [:]
    for p in parts { for f in p.files { files[f.name] = f.data } }
    return files
}

/// Delivers the parts concurrently, one thread per rank (as ranks of a job would).
func deliverConcurrently(_ parts: [CheckpointPart], _ fixture: ServiceFixture) -> [Result<PartReceipt, Error>] {
    final class Results: @unchecked Sendable { var values: [Result<PartReceipt, Error>?]; init(_ n: Int) { values = Array(repeating: nil, count: n) } }
    let results = Results(parts.count)
    let group = DispatchGroup()
    for (i, p) in parts.enumerated() {
        group.enter()
        let sink = try! fixture.sink()
        Thread { results.values[i] = Result { try sink.upload(p) }; group.leave() }.start()
    }
    group.wait()
    return results.values.map { $0! }
}

@Suite(.serialized) struct CheckpointServiceTests {
    @Test func threeRanksCommitACheckpointHoldingExactlyWhatWasSent() throws {
        let fixture = try ServiceFixture()
        let parts = (0..<3).map { part(step: 10, rank: $0, ranks: 3, loss: 2.5) }
        let receipts = try deliverConcurrently(parts, fixture).map { try $0.get() }
        #expect(receipts.filter(\.committed).count == 1)
        let dir = fixture.committed(10)
        let expected = filesOf(parts)
        #expect(expected.count == 6 + 2 + 2, "rank 0: model, optimizer and 4 metadata files; ranks 1 and 2: model and optimizer")
        var got = fixture.files(in: dir)
        #expect(got.removeValue(forKey: "DONE").map { String(decoding: $0, as: UTF8.self) } == "step 10\n")
        let removed = got.removeValue(forKey: "checksums.json")
        let checksums = try #require(removed)
        #expect(got == expected)
        let manifest = try #require(try JSONSerialization.jsonObject(with: checksums) as? [String: Any])
        #expect(manifest["algorithm"] as? String == "sha256")
        #expect(manifest["step"] as? Int == 10)
        let sums = try #require(manifest["files"] as? [String: String])
        #expect(sums == expected.mapValues { CheckpointCommit.sha256($0) })
        let text = String(decoding: checksums, as: UTF8.self)
        let keyOrder = sums.keys.sorted().map { text.range(of: "\"\($0)\"")!.lowerBound }
        #expect(keyOrder == keyOrder.sorted(), "checksums.json keys are sorted")
        #expect(try CheckpointStore.verifyChecksums(dir) == Set(expected.keys))
        // An ordinary checkpoint: it loads, every rank's tensor in it, the loss in its trainer state.
        let contents = try CheckpointStore.read(dir)
        #expect(contents.model.names.sorted() == (0..<3).map(SyntheticCheckpointPart.tensorName))
        #expect(contents.state.step == 10 && contents.state.validationLoss == 2.5)
        #expect(try fixture.sink().latestStep() == 10)
        #expect(try fixture.sink().list().map(\.validationLoss) == [2.5])
        // Nothing of the assembly is left behind.
        #expect((try? FileManager.default.contentsOfDirectory(atPath: fixture.root.path)) == ["step-00000010"])
    }

    @Test func aStepWithAMissingRankOrAHalfSentPartIsNeverCommitted() throws {
        let fixture = try ServiceFixture()
        let first = [part(step: 4, rank: 0, ranks: 3), part(step: 4, rank: 1, ranks: 3)]
        for r in deliverConcurrently(first, fixture) {
            #expect(try !r.get().committed)
        }
        // Rank 2 starts sending, then dies halfway through its file.
        let sink = try fixture.sink()
        let p = part(step: 4, rank: 2, ranks: 3)
        let connection = try sink.connect()
        let header = PartHeader(step: 4, rank: 2, ranks: 3,
                                files: p.files.map { PartFileEntry(name: $0.name, size: $0.data.count, sha256: CheckpointCommit.sha256($0.data)) })
        try connection.send(.putPart, json: header, while: "test")
        try connection.send(Frame(.fileData, Array(p.files[0].data.prefix(1000))), while: "test")
        shutdown(connection.fd, Int32(SHUT_RDWR))
        Thread.sleep(forTimeInterval: 0.3)
        #expect(!FileManager.default.fileExists(atPath: fixture.committed(4).path))
        #expect((try? sink.latestStep()) == .some(nil))
        #expect(CheckpointStore(root: fixture.root).complete().isEmpty)
        // Its redelivery completes the step with exactly the three parts' files.
        #expect(try sink.upload(p).committed)
        #expect(try CheckpointStore.verifyChecksums(fixture.committed(4)) == Set(filesOf(first + [p]).keys))
        #expect(fixture.files(in: fixture.committed(4)).count == filesOf(first + [p]).count + 2)
    }

    @Test func aClientWithTheWrongTokenIsRefusedAndTheServiceServesOthers() throws {
        let fixture = try ServiceFixture()
        do {
            try fixture.sink(token: "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c").deliver(part(step: 1, rank: 0, ranks: 1))
            Issue.record("the wrong token was accepted")
        } catch let error as CheckpointServiceError {
            guard case .authenticationFailed = error else { Issue.record("\(error)"); return }
            #expect("\(error)".contains("127.0.0.1:\(fixture.server.port)"), "\(error)")
        }
        #expect(fixture.log.contains("refused a connection from 127.0.0.1"), "\(fixture.log.all)")
        #expect(!FileManager.default.fileExists(atPath: fixture.committed(1).path))
        #expect(try fixture.sink().upload(part(step: 1, rank: 0, ranks: 1)).committed)
    }

    @Test func garbageBytesAreRefusedAndTheServiceServesOthers() throws {
        let fixture = try ServiceFixture()
        let fd = try Socket.connect(host: "127.0.0.1", port: fixture.server.port, deadline: Date(timeIntervalSinceNow: 2), waitingFor: "test")
        let garbage = Array("GET / HTTP/1.0\r\n\r\n".utf8) + (0..<4000).map { UInt8(truncatingIfNeeded: $0 &* 7919) }
        _ = garbage.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        var byte: UInt8 = 0
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        _ = poll(&pfd, 1, 3000)
        #expect(recv(fd, &byte, 1, 0) <= 0, "the service closed the connection")
        close(fd)
        #expect(fixture.log.contains("not a Tessera handshake"), "\(fixture.log.all)")
        #expect(try fixture.sink().upload(part(step: 2, rank: 0, ranks: 1)).committed)
    }

    @Test func aCorruptedFrameIsRejectedAndThePartIsNotCommitted() throws {
        let fixture = try ServiceFixture()
        let sink = try fixture.sink()
        let p = part(step: 3, rank: 0, ranks: 1)
        let connection = try sink.connect()
        let header = PartHeader(step: 3, rank: 0, ranks: 1,
                                files: p.files.map { PartFileEntry(name: $0.name, size: $0.data.count, sha256: CheckpointCommit.sha256($0.data)) })
        try connection.send(.putPart, json: header, while: "test")
        var bytes = try #require(connection.seal).seal(Frame(.fileData, Array(p.files[0].data.prefix(4096))).unsealed)
        bytes[100] ^= 0x20   // one bit flipped in transit, after the frame was sealed
        try connection.write(bytes, while: "test")
        let reply = try connection.receive(while: "test")
        #expect(reply.type == .error)
        #expect(String(decoding: reply.payload, as: UTF8.self).contains("fails authentication"))
        #expect(!FileManager.default.fileExists(atPath: fixture.committed(3).path))
        let assembly = fixture.server.assemblyURL(3)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: assembly.path)) ?? []).isEmpty, "no half-received file stays")
        // A part whose bytes do not match their announced SHA-256 is refused too, and named.
        var forged = p
        forged.files[0].data[0] ^= 1
        let forgedHeader = PartHeader(step: 3, rank: 0, ranks: 1,
                                      files: p.files.map { PartFileEntry(name: $0.name, size: $0.data.count, sha256: CheckpointCommit.sha256($0.data)) })
        let second = try sink.connect()
        try second.send(.putPart, json: forgedHeader, while: "test")
        for f in forged.files where !f.data.isEmpty {
            for start in stride(from: 0, to: f.data.count, by: Frame.chunkBytes) {
                try second.send(Frame(.fileData, Array(f.data[start..<min(f.data.count, start + Frame.chunkBytes)])), while: "test")
            }
        }
        try second.send(Frame(.partEnd), while: "test")
        let refusal = try second.receive(while: "test")
        #expect(refusal.type == .error && String(decoding: refusal.payload, as: UTF8.self).contains("not the announced"))
        #expect(!FileManager.default.fileExists(atPath: fixture.committed(3).path))
        #expect(try sink.upload(p).committed)
    }

    /// The client's upload sends each file's SHA-256 after its bytes (`fileEnd`): a sum that
    /// does not match the bytes, or a missing `fileEnd`, is refused naming the file, and
    /// nothing is committed; the honest upload then commits.
    @Test func aSumSentAfterTheBytesIsCheckedAndAMissingOneRefused() throws {
        let fixture = try ServiceFixture()
        let sink = try fixture.sink()
        let p = part(step: 5, rank: 0, ranks: 1)
        let header = PartHeader(step: 5, rank: 0, ranks: 1, files: p.files.map { PartFileEntry(name: $0.name, size: $0.data.count, sha256: "") })
        func stream(_ sum: (Data) -> String?) throws -> String {
            let connection = try sink.connect()
            try connection.send(.putPart, json: header, while: "test")
            for f in p.files {
                for start in stride(from: 0, to: f.data.count, by: Frame.chunkBytes) {
                    try connection.send(Frame(.fileData, Array(f.data[start..<min(f.data.count, start + Frame.chunkBytes)])), while: "test")
                }
                guard let text = sum(f.data) else { break }
                try connection.send(.fileEnd, json: FileEnd(sha256: text), while: "test")
            }
            try connection.send(Frame(.partEnd), while: "test")
            let reply = try connection.receive(while: "test")
            return reply.type == .error ? String(decoding: reply.payload, as: UTF8.self) : "accepted"
        }
        let wrong = try stream { CheckpointCommit.sha256($0 + Data([1])) }
        #expect(wrong.contains("not the announced") && wrong.contains(p.files[0].name), "\(wrong)")
        let missing = try stream { _ in nil }
        #expect(missing.contains("where the SHA-256 of \(p.files[0].name)"), "\(missing)")
        #expect(!FileManager.default.fileExists(atPath: fixture.committed(5).path))
        #expect(try stream { CheckpointCommit.sha256($0) } == "accepted")
        #expect(try CheckpointStore.verifyChecksums(fixture.committed(5)) == Set(p.files.map(\.name)), "the sums recorded are the streamed ones")
        // upload() leaves each sum to the service (an empty fileEnd): it records the SHA-256 of what arrived.
        let q = part(step: 6, rank: 0, ranks: 1)
        #expect(try sink.upload(q).committed)
        let recorded = try CheckpointStore.checksums(fixture.committed(6))
        #expect(recorded == Dictionary(uniqueKeysWithValues: q.files.map { ($0.name, CheckpointCommit.sha256($0.data)) }), "\(recorded)")
    }

    @Test func fetchReturnsTheCommittedFilesIdentically() throws {
        let fixture = try ServiceFixture()
        _ = try deliverConcurrently((0..<2).map { part(step: 7, rank: $0, ranks: 2, loss: 1.25) }, fixture).map { try $0.get() }
        let sink = try fixture.sink()
        let local = try sink.fetch(step: 7)
        #expect(local.lastPathComponent == "step-00000007")
        #expect(fixture.files(in: local) == fixture.files(in: fixture.committed(7)))
        #expect(CheckpointStore(root: local.deletingLastPathComponent()).complete().map(\.step) == [7])
        #expect(try sink.list() == [StepInfo(step: 7, validationLoss: 1.25, bytes: fixture.files(in: local).values.reduce(0) { $0 + $1.count })])
        do { _ = try sink.fetch(step: 8); Issue.record("fetched a step that does not exist") } catch {
            #expect("\(error)".contains("step 8 is not a complete checkpoint here; complete steps: 7"), "\(error)")
            #expect("\(error)".contains("127.0.0.1:\(fixture.server.port)"))
        }
        #expect(!((try? FileManager.default.contentsOfDirectory(atPath: sink.cacheDirectory.path)) ?? []).contains { $0.hasPrefix(".") })
    }

    @Test func retentionKeepsTheLastKAndTheBestKAndNeverTheNewest() throws {
        let fixture = try ServiceFixture(retention: CheckpointRetention(keepLast: 2, keepBest: 1))
        let losses: [Double] = [5, 1, 4, 3, 6, 7]
        for (i, loss) in losses.enumerated() {
            #expect(try fixture.sink().upload(part(step: i + 1, rank: 0, ranks: 1, bytes: 100, loss: loss)).committed)
        }
        #expect(CheckpointStore(root: fixture.root).complete().map(\.step) == [2, 5, 6])
        #expect(fixture.log.contains("retention: deleted step 1"))
        // The policy alone: the newest stays even when it is the worst and nothing asks for it.
        let policy = CheckpointRetention(keepLast: 1, keepBest: 1)
        #expect(policy.kept([(1, 0.5), (2, 1.0), (3, 9.0)]) == [1, 3])
        #expect(CheckpointRetention(keepLast: 1, keepBest: 2).kept([(1, 3), (2, nil), (3, 1), (4, 2), (5, nil)]) == [3, 4, 5])
    }

    @Test func aRestartedServiceCarriesOnAndServesWhatItHad() throws {
        let fixture = try ServiceFixture()
        #expect(try fixture.sink().upload(part(step: 1, rank: 0, ranks: 2)).committed == false)
        #expect(try fixture.sink().upload(part(step: 1, rank: 1, ranks: 2)).committed)
        let rank0 = part(step: 2, rank: 0, ranks: 2)
        #expect(try fixture.sink().upload(rank0).committed == false)
        // What a crash leaves: a half-received file, a stray one in the assembly, and an unfinished older step.
        let assembly = fixture.server.assemblyURL(2)
        #expect(assembly.lastPathComponent == CheckpointLayout.partialName(step: 2))
        let incoming = fixture.server.incomingURL(2)
        try Data("half".utf8).write(to: incoming.appendingPathComponent("9-model-00002-of-00002.safetensors"))
        try Data("stray".utf8).write(to: assembly.appendingPathComponent("optimizer-00002-of-00002.safetensors"))
        try FileManager.default.createDirectory(at: fixture.server.assemblyURL(0), withIntermediateDirectories: true)
        try fixture.restart()
        #expect(!FileManager.default.fileExists(atPath: fixture.server.assemblyURL(0).path), "a stale step is cleaned")
        #expect(!FileManager.default.fileExists(atPath: incoming.path), "parts that were arriving are dropped")
        #expect(try FileManager.default.contentsOfDirectory(atPath: assembly.path).sorted() == rank0.files.map(\.name).sorted())
        let sink = try fixture.sink(cache: "cache-after-restart")
        #expect(try sink.latestStep() == 1)
        #expect(fixture.files(in: try sink.fetch(step: 1)) == fixture.files(in: fixture.committed(1)))
        let rank1 = part(step: 2, rank: 1, ranks: 2)
        #expect(try sink.upload(rank1).committed, "rank 0's part, acknowledged before the restart, still counts")
        var got = fixture.files(in: fixture.committed(2))
        got["DONE"] = nil; got["checksums.json"] = nil
        #expect(got == filesOf([rank0, rank1]))
        _ = try CheckpointStore.read(fixture.committed(2))
        #expect(try sink.latestStep() == 2)
    }

    @Test func aCommitInterruptedAfterDoneIsFinishedOnRestart() throws {
        let fixture = try ServiceFixture()
        fixture.server.stop()
        // What `CheckpointCommit` leaves when it dies after DONE, before the rename: the whole
        // checkpoint, DONE included, still under the assembly's name.
        func interrupted(_ p: CheckpointPart) throws -> URL {
            let scratch = fixture.directory.url.appendingPathComponent("scratch-\(p.step)")
            let partial = scratch.appendingPathComponent(CheckpointLayout.partialName(step: p.step))
            try FileManager.default.createDirectory(at: partial, withIntermediateDirectories: true)
            for f in p.files { try f.data.write(to: partial.appendingPathComponent(f.name)) }
            let done = try CheckpointCommit.commit(partial: partial, root: scratch, step: p.step)
            let assembly = fixture.server.assemblyURL(p.step)
            try FileManager.default.moveItem(at: done, to: assembly)
            return assembly
        }
        let good = part(step: 5, rank: 0, ranks: 1, bytes: 400, loss: 3)
        let assembly = try interrupted(good)
        let expected = fixture.files(in: assembly)
        // And one whose files do not match its checksums: never committed.
        let bad = try interrupted(part(step: 6, rank: 0, ranks: 1, bytes: 400))
        try FileManager.default.removeItem(at: bad.appendingPathComponent("checksums.json"))
        try FileManager.default.copyItem(at: assembly.appendingPathComponent("checksums.json"), to: bad.appendingPathComponent("checksums.json"))
        try fixture.restart()
        #expect(CheckpointStore(root: fixture.root).complete().map(\.step) == [5])
        #expect(fixture.files(in: fixture.committed(5)) == expected)
        try CheckpointStore.verifyChecksums(fixture.committed(5))
        #expect(!FileManager.default.fileExists(atPath: bad.path))
        #expect(fixture.log.contains("finished committing step 5, interrupted by the previous run"))
    }

    /// `.step-N.replaced` comes from a commit replacing a committed step N (the directory sink
    /// or `CheckpointStore.write` on the same root; the service itself never recommits a step)
    /// that died: a restarted service deletes it when `step-N` is complete, and restores it when
    /// it is the only copy of step N, which it then lists and serves.
    @Test func aRestartedServiceDeletesOrRestoresReplacedLeftovers() throws {
        let fixture = try ServiceFixture()
        fixture.server.stop()
        let fm = FileManager.default
        func commitAside(_ p: CheckpointPart, as name: String) throws -> [String: Data] {
            let scratch = fixture.directory.url.appendingPathComponent("scratch-\(name)")
            let partial = scratch.appendingPathComponent(CheckpointLayout.partialName(step: p.step))
            try fm.createDirectory(at: partial, withIntermediateDirectories: true)
            for f in p.files { try f.data.write(to: partial.appendingPathComponent(f.name)) }
            let done = try CheckpointCommit.commit(partial: partial, root: scratch, step: p.step)
            try fm.moveItem(at: done, to: fixture.root.appendingPathComponent(name))
            return fixture.files(in: fixture.root.appendingPathComponent(name))
        }
        _ = try commitAside(part(step: 7, rank: 0, ranks: 1, bytes: 400), as: CheckpointLayout.replacedName(step: 7))
        let current7 = try commitAside(part(step: 7, rank: 0, ranks: 1, bytes: 400), as: "step-00000007")
        let only8 = try commitAside(part(step: 8, rank: 0, ranks: 1, bytes: 400, loss: 1.5), as: CheckpointLayout.replacedName(step: 8))
        try fixture.restart()
        #expect(try fm.contentsOfDirectory(atPath: fixture.root.path).sorted() == ["step-00000007", "step-00000008"])
        #expect(fixture.files(in: fixture.committed(7)) == current7)
        #expect(fixture.log.contains("removed .step-00000007.replaced: the previous copy of step 7, replaced by a complete one"))
        #expect(fixture.log.contains("restored step 8 from .step-00000008.replaced: a commit replacing it was interrupted"))
        let sink = try fixture.sink()
        #expect(try sink.list().map(\.step) == [7, 8] && sink.list().last?.validationLoss == 1.5)
        #expect(fixture.files(in: try sink.fetch(step: 8)) == only8)
    }

    /// The part header has no validation loss any more (retention and listings read
    /// `trainer_state.json`); a header from an earlier client, or a manifest an earlier service
    /// kept, still decodes: the key is ignored, the frame format is unchanged.
    @Test func aPartHeaderWithTheFormerValidationLossStillDecodes() throws {
        let earlier = #"{"step":3,"rank":1,"ranks":2,"validationLoss":2.5,"files":[]}"#
        let header = try JSONDecoder().decode(PartHeader.self, from: Data(earlier.utf8))
        #expect(header == PartHeader(step: 3, rank: 1, ranks: 2, files: []))
        #expect(!String(decoding: try JSONEncoder().encode(header), as: UTF8.self).contains("validationLoss"))
    }

    @Test func crc32MatchesTheStandardCheckValue() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([UInt8]()) == 0)
    }

    @Test func aPartTheServiceCannotUseIsRefusedWithItsReason() throws {
        let fixture = try ServiceFixture()
        #expect(try fixture.sink().upload(part(step: 20, rank: 0, ranks: 1, bytes: 10)).committed)
        let sink = try fixture.sink()
        do { try sink.deliver(part(step: 19, rank: 0, ranks: 1, bytes: 10)); Issue.record("an older step was accepted") } catch {
            #expect("\(error)".contains("checkpoint service at 127.0.0.1:\(fixture.server.port) refused the request"), "\(error)")
            #expect("\(error)".contains("step 20 is already complete, so step 19 would never be committed"), "\(error)")
        }
        // The same part again is acknowledged (a rank retrying after a lost acknowledgement); different bytes are not.
        var again = part(step: 20, rank: 0, ranks: 1, bytes: 10)
        again.files = fixture.files(in: fixture.committed(20)).filter { $0.key != "DONE" && $0.key != "checksums.json" }
            .map { CheckpointFile(name: $0.key, data: $0.value) }
        #expect(try sink.upload(again).committed)
        again.files[0].data.append(1)
        #expect(throws: CheckpointServiceError.self) { try sink.upload(again) }
        #expect(throws: CheckpointServiceError.self) { try sink.deliver(CheckpointPart(step: 21, rank: 0, ranks: 1, files: [CheckpointFile(name: "DONE", data: Data())])) }
        #expect(CheckpointStore(root: fixture.root).complete().map(\.step) == [20])
    }

    @Test func badAddressesAndMissingTokensAreNamed() throws {
        #expect(throws: CheckpointServiceError.invalidAddress("localhost")) { try ServiceAddress("localhost") }
        #expect(throws: CheckpointServiceError.invalidAddress("h:99999")) { try ServiceAddress("h:99999") }
        #expect(try ServiceAddress("10.0.0.5:29600") == ServiceAddress(host: "10.0.0.5", port: 29600))
        #expect(throws: CheckpointServiceError.self) { try CheckpointServer(root: URL(fileURLWithPath: "/tmp/x"), token: "").start() }
        let unreachable = try ServiceCheckpointSink(address: ServiceAddress(host: "127.0.0.1", port: try Socket.freePort(host: "127.0.0.1")),
                                                    token: String(repeating: "7a", count: 16), cacheDirectory: URL(fileURLWithPath: "/tmp"), connectTimeout: 0.3)
        do { _ = try unreachable.latestStep(); Issue.record("reached nothing") } catch {
            #expect("\(error)".contains("checkpoint service at 127.0.0.1:") && "\(error)".contains("unreachable"), "\(error)")
        }
        // A service that accepts but never answers: the read times out, naming the address.
        let silent = try Socket.listen(host: "127.0.0.1", port: 0)
        defer { close(silent.fd) }
        let waiting = try ServiceCheckpointSink(address: ServiceAddress(host: "127.0.0.1", port: silent.port), token: String(repeating: "7a", count: 16),
                                                cacheDirectory: URL(fileURLWithPath: "/tmp"), connectTimeout: 1, ioTimeout: 0.5)
        let start = Date()
        do { _ = try waiting.latestStep(); Issue.record("a silent service answered") } catch {
            #expect(error as? CheckpointServiceError == .timedOut(address: "127.0.0.1:\(silent.port)", waitingFor: "handshaking", seconds: 0.5), "\(error)")
        }
        #expect(Date().timeIntervalSince(start) < 3)
    }

    /// The same parts, through the directory sink and through the service (and fetched back
    /// from it), give byte-identical checkpoints: every file, `checksums.json` and `DONE`
    /// included. Once with synthetic parts of three ranks, once with a tensor split across
    /// ranks and a rank that owns nothing (and so sends no file).
    @Test func theDirectorySinkAndTheServiceWriteIdenticalCheckpoints() throws {
        let fixture = try ServiceFixture()
        let synthetic = (0..<3).map { part(step: 12, rank: $0, ranks: 3, bytes: 50_000, loss: 0.75) }
        let split = try CheckpointFixtures.threeRankParts(CheckpointFixtures.contents(step: 4, validationLoss: 1.5)).map { try $0.part() }
        #expect(split[2].files.isEmpty)
        let direct = DirectoryCheckpointSink(root: fixture.directory.url.appendingPathComponent("direct"), timeoutSeconds: 20)
        for parts in [split, synthetic] {
            let step = parts[0].step
            #expect(try deliverConcurrently(parts, fixture).map { try $0.get().committed }.filter { $0 }.count == 1)
            for p in parts.reversed() { try direct.deliver(p) }   // rank 0 last: the others' markers are there
            let viaService = fixture.files(in: fixture.committed(step))
            let viaDirectory = fixture.files(in: direct.root.appendingPathComponent(CheckpointLayout.directoryName(step: step)))
            #expect(Set(viaService.keys) == Set(filesOf(parts).keys).union(["checksums.json", "DONE"]))
            #expect(viaDirectory == viaService, "step \(step): \(viaDirectory.keys.sorted()) vs \(viaService.keys.sorted())")
            #expect(fixture.files(in: try fixture.sink().fetch(step: step)) == viaService)
            #expect(try CheckpointStore.read(fixture.committed(step)).model == CheckpointStore.read(direct.root.appendingPathComponent(CheckpointLayout.directoryName(step: step))).model)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.root.path).sorted() == ["step-00000004", "step-00000012"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: direct.root.path).sorted() == ["step-00000004", "step-00000012"])
        #expect(try fixture.sink().list().map(\.validationLoss) == [1.5, 0.75])
    }

    /// Parts that do not make a checkpoint (rank 0's trainer state missing, or a model file the
    /// index names that no rank sent) are refused when the last part arrives, naming the file;
    /// nothing is committed and the service serves on.
    @Test func partsThatDoNotMakeACheckpointAreRefusedNamingWhatIsMissing() throws {
        let fixture = try ServiceFixture()
        var rank0 = part(step: 8, rank: 0, ranks: 1, bytes: 100)
        rank0.files.removeAll { $0.name == CheckpointLayout.trainerState }
        do { try fixture.sink().deliver(rank0); Issue.record("a part without trainer_state.json was committed") } catch {
            #expect("\(error)".contains("step 8 cannot be committed") && "\(error)".contains("trainer_state.json"), "\(error)")
        }
        let lonely = part(step: 9, rank: 0, ranks: 2, bytes: 100)   // the index names rank 1's file
        let rank1 = part(step: 9, rank: 1, ranks: 2, bytes: 100)
        #expect(try !fixture.sink().upload(lonely).committed)
        var withoutModel = rank1
        withoutModel.files.removeAll { $0.name.hasPrefix("model-") }
        do { try fixture.sink().deliver(withoutModel); Issue.record("a checkpoint missing a model file was committed") } catch {
            #expect("\(error)".contains("model-00002-of-00002.safetensors") && "\(error)".contains("no rank delivered it"), "\(error)")
        }
        #expect(CheckpointStore(root: fixture.root).complete().isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.root.path).isEmpty, "the steps were removed")
        #expect(try fixture.sink().upload(part(step: 10, rank: 0, ranks: 1, bytes: 100)).committed)
    }

    /// A rank retrying its part (its acknowledgement was lost) while the step gets committed:
    /// the retry is compared with the committed files and acknowledged, and none of its bytes
    /// lands in the checkpoint.
    @Test func aRetryStillArrivingWhenTheStepIsCommittedIsAcknowledged() throws {
        let fixture = try ServiceFixture()
        let rank0 = part(step: 3, rank: 0, ranks: 2, bytes: 5000), rank1 = part(step: 3, rank: 1, ranks: 2, bytes: 5000)
        #expect(try !fixture.sink().upload(rank1).committed)
        let retry = try fixture.sink().connect()
        try retry.send(.putPart, json: PartHeader(step: 3, rank: 1, ranks: 2,
                                                  files: rank1.files.map { PartFileEntry(name: $0.name, size: $0.data.count, sha256: CheckpointCommit.sha256($0.data)) }),
                       while: "test")
        let first = rank1.files[0].data
        try retry.send(Frame(.fileData, Array(first.prefix(100))), while: "test")
        let incoming = fixture.server.incomingURL(3)
        let end = Date(timeIntervalSinceNow: 5)
        while ((try? FileManager.default.contentsOfDirectory(atPath: incoming.path)) ?? []).isEmpty, Date() < end { Thread.sleep(forTimeInterval: 0.01) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: incoming.path).count == 1, "the service is writing the retry's first file")
        #expect(try fixture.sink().upload(rank0).committed)
        let committed = fixture.files(in: fixture.committed(3))
        try retry.send(Frame(.fileData, Array(first.dropFirst(100))), while: "test")
        for f in rank1.files.dropFirst() { try retry.send(Frame(.fileData, Array(f.data)), while: "test") }
        try retry.send(Frame(.partEnd), while: "test")
        let reply = try retry.receive(while: "test")
        #expect(reply.type == .ok, "\(String(decoding: reply.payload, as: UTF8.self))")
        #expect(try JSONDecoder().decode(PartReceipt.self, from: Data(reply.payload)) == PartReceipt(step: 3, rank: 1, committed: true))
        #expect(fixture.files(in: fixture.committed(3)) == committed)
        #expect(Set(committed.keys) == Set(filesOf([rank0, rank1]).keys).union(["checksums.json", "DONE"]))
        #expect(!FileManager.default.fileExists(atPath: incoming.path), "nothing of the retry is left")
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.root.path) == ["step-00000003"])
    }
}
