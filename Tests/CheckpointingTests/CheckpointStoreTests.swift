import Testing
import Checkpointing
import Foundation
import TensorCore
import _CheckpointTestSupport
import _TestSupport

@Suite struct CheckpointStoreTests {
    static func contents(step: Int, validationLoss: Double? = nil) -> CheckpointContents {
        CheckpointFixtures.contents(step: step, validationLoss: validationLoss)
    }

    /// Every file of a directory with its bytes, to show nothing was changed.
    static func snapshot(_ url: URL) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: url.path) {
            out[name] = try Data(contentsOf: url.appendingPathComponent(name))
        }
        return out
    }

    @Test func writesOneRankLayoutAndReadsItBack() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let url = try CheckpointStore(root: directory.url).write(Self.contents(step: 7, validationLoss: 2.5))
        #expect(url.lastPathComponent == "step-00000007")
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: url.path))
        #expect(files == ["model-00001-of-00001.safetensors", "model.safetensors.index.json", "config.json", "optimizer-00001-of-00001.safetensors",
                          "trainer_state.json", "run.yaml", "checksums.json", "DONE"], "no delivery marker or temporary is left")
        let back = try CheckpointStore.read(url)
        #expect(back.model == Self.contents(step: 7).model)
        #expect(back.optimizer == Self.contents(step: 7).optimizer)
        #expect(back.shards == Self.contents(step: 7).shards, "each tensor's shape and axis survive")
        #expect(back.state == Self.contents(step: 7, validationLoss: 2.5).state)
        #expect(CheckpointStore.validationLoss(of: url) == 2.5)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["step-00000007"], "the partial directory is gone")
    }

    /// Three ranks deliver slices of one tensor (rows 0-1, row 2) and a replicated tensor from
    /// their own threads; rank 0 commits once all arrived, and reading gives the whole tensors.
    @Test func partsFromSeveralRanksAssembleIntoWholeTensors() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let whole = Self.contents(step: 4)
        let parts = Self.threeRankParts(whole)
        let sink = DirectoryCheckpointSink(root: directory.url, timeoutSeconds: 20)
        let errors = Self.deliverConcurrently(parts, to: sink)
        #expect(errors.allSatisfy { $0 == nil }, "\(errors)")
        let url = directory.url.appendingPathComponent("step-00000004")
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: url.path))
        #expect(files == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "optimizer-00001-of-00003.safetensors",
                          "optimizer-00002-of-00003.safetensors", "model.safetensors.index.json", "config.json", "trainer_state.json",
                          "run.yaml", "checksums.json", "DONE"], "rank 2 owns nothing and writes nothing")
        let back = try CheckpointStore.read(url)
        #expect(back.model == whole.model)
        #expect(back.optimizer == whole.optimizer)
        #expect(back.shards["model.embed_tokens.weight"] == TensorShard(globalShape: [3, 2], offset: [0, 0], axis: "expert"))
        #expect(try sink.latestStep() == 4)
        #expect(try sink.fetch(step: 4) == url)
    }

    static func threeRankParts(_ whole: CheckpointContents, step: Int = 4) -> [CheckpointShardSnapshot] {
        CheckpointFixtures.threeRankParts(whole, step: step)
    }

    /// The receipts: rank 0's (it commits once every marker is in) names the committed
    /// directory; the others' say only that their part is durable.
    @Test func rankZerosReceiptNamesTheCommittedDirectory() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let sink = DirectoryCheckpointSink(root: directory.url, timeoutSeconds: 20)
        #expect(try sink.prepare(owner: false) == [] && sink.location == directory.url.path && sink.directory == directory.url)
        let parts = Self.threeRankParts(Self.contents(step: 4))
        let others = try parts.dropFirst().map { try sink.deliver($0.part()) }
        #expect(others == [1, 2].map { _ in CheckpointReceipt(step: 4, committed: false, location: directory.url.path) })
        let receipt = try sink.deliver(parts[0].part())
        #expect(receipt.step == 4 && receipt.committed && receipt.location == directory.url.path)
        #expect(receipt.directory?.path == directory.url.appendingPathComponent("step-00000004").path)
    }

    /// Delivers each part from its own thread; each rank's error (nil: none).
    static func deliverConcurrently(_ parts: [CheckpointShardSnapshot], to sink: DirectoryCheckpointSink) -> [String?] {
        final class Errors: @unchecked Sendable {
            let lock = NSLock()
            var values: [String?]
            init(_ count: Int) { values = Array(repeating: nil, count: count) }
        }
        let errors = Errors(parts.count)
        let group = DispatchGroup()
        for (i, part) in parts.enumerated() {
            group.enter()
            Thread {
                do { try sink.deliver(part.part()) } catch { errors.lock.lock(); errors.values[i] = "\(error)"; errors.lock.unlock() }
                group.leave()
            }.start()
        }
        group.wait()
        return errors.values
    }

    /// The commit records the SHA-256 of the bytes each rank wrote (hashed in memory, listed
    /// in its marker), not of what the file holds when rank 0 commits: a shard damaged on disk
    /// between delivery and commit fails `verifyChecksums` instead of being blessed. (Reading the
    /// files back at commit, as before, recorded the damaged bytes' sum.)
    @Test func aShardDamagedBeforeTheCommitFailsVerification() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let parts = Self.threeRankParts(Self.contents(step: 4))
        let sink = DirectoryCheckpointSink(root: directory.url, timeoutSeconds: 20)
        #expect(Self.deliverConcurrently([parts[1], parts[2]], to: sink).allSatisfy { $0 == nil })
        let shard = directory.url.appendingPathComponent(".step-00000004.partial/model-00002-of-00003.safetensors")
        var bytes = try Data(contentsOf: shard)
        bytes[bytes.count - 1] ^= 0x40   // one bit of the last value
        try bytes.write(to: shard)
        try sink.deliver(parts[0].part())
        let url = directory.url.appendingPathComponent("step-00000004")
        #expect(try CheckpointStore.checksums(url)["model-00002-of-00003.safetensors"] == CheckpointCommit.sha256(try parts[1].part().files[0].data))
        #expect(throws: CheckpointError.checksumMismatch(path: url.appendingPathComponent("model-00002-of-00003.safetensors").path)) {
            try CheckpointStore.verifyChecksums(url)
        }
    }

    /// Encoding straight from buffers (the training path) gives the bytes encoding tensors does.
    @Test func encodingFromBuffersMatchesEncodingTensors() throws {
        let dict = Self.contents(step: 1).optimizer
        let entries = dict.entries
        let fromTensors = try SafeTensors.encode(dict, metadata: ["step": "1"])
        let values = entries.map(\.tensor.scalars)
        let fromBuffers = try values[0].withUnsafeBufferPointer { a in try values[1].withUnsafeBufferPointer { b in
            try values[2].withUnsafeBufferPointer { c in try values[3].withUnsafeBufferPointer { d in
                try SafeTensors.encode(zip(entries, [a, b, c, d]).map { SafeTensors.Source(name: $0.0.name, shape: $0.0.tensor.shape, scalars: $0.1) },
                                       metadata: ["step": "1"])
            } }
        } }
        #expect(fromBuffers == fromTensors)
        #expect(try SafeTensors.decode(fromBuffers, path: "buffers").tensors == dict)
    }

    @Test func aRankThatNeverDeliversIsNamedAndNothingIsCommitted() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let previous = try CheckpointStore(root: directory.url).write(Self.contents(step: 2))
        let before = try Self.snapshot(previous)
        let parts = Self.threeRankParts(Self.contents(step: 4))
        let sink = DirectoryCheckpointSink(root: directory.url, timeoutSeconds: 0.3)
        let errors = Self.deliverConcurrently([parts[0], parts[2]], to: sink)   // rank 1 is missing
        let partial = directory.file(".step-00000004.partial")
        #expect(errors[0] == CheckpointError.partsMissing(path: partial, ranks: [1], seconds: 0.3).description)
        #expect(errors[0]?.contains("rank 1 did not deliver its part") == true)
        #expect(CheckpointStore(root: directory.url).complete().map(\.step) == [2])
        #expect(try Self.snapshot(previous) == before)
    }

    /// Files of an earlier attempt at the same step (say with more ranks) are not committed.
    @Test func leftoversOfAnEarlierAttemptAreNotCommitted() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let partial = directory.url.appendingPathComponent(".step-00000005.partial")
        try FileManager.default.createDirectory(at: partial, withIntermediateDirectories: true)
        try Data([1, 2, 3]).write(to: partial.appendingPathComponent("optimizer-00004-of-00004.safetensors"))
        let sink = DirectoryCheckpointSink(root: directory.url)
        var whole = Self.contents(step: 5)
        whole.state.step = 5
        let errors = Self.deliverConcurrently(Self.threeRankParts(whole, step: 5), to: sink)
        #expect(errors.allSatisfy { $0 == nil }, "\(errors)")
        let url = try sink.fetch(step: 5)
        #expect(!FileManager.default.fileExists(atPath: url.appendingPathComponent("optimizer-00004-of-00004.safetensors").path))
        #expect(try CheckpointStore.read(url).model == whole.model)
    }

    @Test func aDirectoryWithoutDoneDoesNotCount() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let store = CheckpointStore(root: directory.url)
        let good = try store.write(Self.contents(step: 1))
        let half = try store.write(Self.contents(step: 2))
        try FileManager.default.removeItem(at: half.appendingPathComponent("DONE"))
        try FileManager.default.createDirectory(atPath: directory.file(".step-00000003.partial"), withIntermediateDirectories: true)
        #expect(store.latest()?.lastPathComponent == good.lastPathComponent)
        #expect(try DirectoryCheckpointSink(root: directory.url).latestStep() == 1)
        let error = #expect(throws: CheckpointError.self) { try CheckpointStore.read(half) }
        #expect(error?.description.contains("no DONE marker") == true)
    }

    /// Recomputes checksums.json, as if the damage had happened before the commit.
    static func reseal(_ url: URL) throws {
        var sums: [String: String] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: url.path) where !["checksums.json", "DONE"].contains(name) {
            sums[name] = try CheckpointCommit.sha256(of: url.appendingPathComponent(name))
        }
        try JSONSerialization.data(withJSONObject: ["algorithm": "sha256", "files": sums]).write(to: url.appendingPathComponent("checksums.json"))
    }

    /// Each kind of damage gives one error naming the file, and reading changes nothing.
    @Test(arguments: ["truncated", "truncated-resealed", "bad-header", "checksum", "missing-shard", "shape-vs-index"])
    func damagedCheckpointsAreReportedWithTheFile(damage: String) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let sink = DirectoryCheckpointSink(root: directory.url)
        #expect(Self.deliverConcurrently(Self.threeRankParts(Self.contents(step: 3), step: 3), to: sink).allSatisfy { $0 == nil })
        let url = try sink.fetch(step: 3)
        let shard = url.appendingPathComponent("model-00002-of-00003.safetensors")
        var expected: [String]
        switch damage {
        case "truncated", "truncated-resealed":
            let bytes = try Data(contentsOf: shard)
            try bytes.prefix(bytes.count - 4).write(to: shard)
            if damage == "truncated-resealed" { try Self.reseal(url) }   // damaged before the commit: the checksums agree
            expected = [shard.path, "corrupt or truncated", "data section has"]
        case "bad-header":
            var bytes = try Data(contentsOf: shard)
            bytes[9] = UInt8(ascii: "!")
            try bytes.write(to: shard)
            try Self.reseal(url)
            expected = [shard.path, "the JSON header does not parse"]
        case "checksum":
            var bytes = try Data(contentsOf: shard)
            bytes[bytes.count - 1] ^= 0xFF
            try bytes.write(to: shard)
            expected = [shard.path, "does not match its SHA-256 in checksums.json"]
        case "missing-shard":
            try FileManager.default.removeItem(at: shard)
            expected = [shard.path, "does not exist", "lost a shard"]
        default:
            let index = url.appendingPathComponent("model.safetensors.index.json")
            let text = try String(contentsOf: index, encoding: .utf8)
            try text.replacingOccurrences(of: "\"model.norm.weight\" : [\n        2\n      ]", with: "\"model.norm.weight\" : [\n        3\n      ]")
                .write(to: index, atomically: true, encoding: .utf8)
            #expect(try String(contentsOf: index, encoding: .utf8) != text, "the test edits the index")
            try Self.reseal(url)
            expected = [index.path, "tensor model.norm.weight has shape [2] in model-00001-of-00003.safetensors, the index says [3]"]
        }
        let before = try Self.snapshot(url)
        let error = #expect(throws: CheckpointError.self) { try CheckpointStore.read(url) }
        for part in expected { #expect(error?.description.contains(part) == true, "\(String(describing: error)) should say \(part)") }
        #expect(error?.description.split(separator: "\n").count == 1)
        #expect(try Self.snapshot(url) == before, "reading changed nothing")
    }

    /// A disk that fills during a save (writes go to /dev/full): one error naming the file in
    /// the checkpoint's directory, and the previous checkpoint intact and loadable.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/full"), "no /dev/full on this machine to fill the disk with"))
    func aFullDiskLeavesThePreviousCheckpointIntact() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let store = CheckpointStore(root: directory.url)
        let previous = try store.write(Self.contents(step: 1))
        let before = try Self.snapshot(previous)
        let partial = directory.url.appendingPathComponent(".step-00000002.partial")
        try FileManager.default.createDirectory(at: partial, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: partial.appendingPathComponent(".model-00001-of-00003.safetensors.tmp").path,
                                                   withDestinationPath: "/dev/full")
        let part = Self.threeRankParts(Self.contents(step: 2), step: 2)[0]
        let error = #expect(throws: CheckpointError.self) {
            try DirectoryCheckpointSink(root: directory.url).deliver(CheckpointPart(step: 2, rank: 0, ranks: 1, files: part.part().files))
        }
        #expect(error?.description.hasPrefix("cannot write \(partial.path)/model-00001-of-00003.safetensors") == true, "\(String(describing: error))")
        #expect(store.complete().map(\.step) == [1])
        #expect(try Self.snapshot(previous) == before)
        #expect(try CheckpointStore.read(previous).model == Self.contents(step: 1).model)
    }

    /// A commit replacing step N moves the old `step-N` to `.step-N.replaced`, renames the new
    /// one into place, then deletes the old. What a crash between those leaves: with a complete
    /// `step-N`, the old copy is garbage; without one, it is the only copy and comes back; one
    /// that does not verify is deleted; a `step-N` without DONE leaves both alone.
    @Test func removeUnfinishedRestoresOrDeletesAReplacementCutShort() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let store = CheckpointStore(root: directory.url)
        let fm = FileManager.default
        /// Writes a checkpoint of `step` and moves it to `name` (a hidden leftover).
        func leftover(_ step: Int, loss: Double, as name: String) throws -> [String: Data] {
            let url = try store.write(Self.contents(step: step, validationLoss: loss))
            try fm.moveItem(at: url, to: directory.url.appendingPathComponent(name))
            return try Self.snapshot(directory.url.appendingPathComponent(name))
        }
        let old3 = try leftover(3, loss: 9, as: CheckpointLayout.replacedName(step: 3))
        let new3 = try Self.snapshot(try store.write(Self.contents(step: 3, validationLoss: 1)))
        #expect(old3 != new3)
        let only4 = try leftover(4, loss: 2, as: CheckpointLayout.replacedName(step: 4))
        _ = try leftover(5, loss: 2, as: CheckpointLayout.replacedName(step: 5))
        try Data("truncated".utf8).write(to: directory.url.appendingPathComponent(CheckpointLayout.replacedName(step: 5) + "/model-00001-of-00001.safetensors"))
        _ = try leftover(6, loss: 2, as: CheckpointLayout.replacedName(step: 6))
        try fm.createDirectory(at: directory.url.appendingPathComponent("step-00000006"), withIntermediateDirectories: true)
        try fm.createDirectory(at: directory.url.appendingPathComponent(CheckpointLayout.partialName(step: 7)), withIntermediateDirectories: true)

        let lines = DirectoryCheckpointSink(root: directory.url).removeUnfinished()
        #expect(store.complete().map(\.step) == [3, 4])
        #expect(try Self.snapshot(store.complete()[0].url) == new3, "the complete replacement stays")
        #expect(try Self.snapshot(store.complete()[1].url) == only4, "the only copy of step 4 is back")
        #expect(try CheckpointStore.read(store.complete()[1].url).state.validationLoss == 2)
        #expect(try fm.contentsOfDirectory(atPath: directory.path).sorted()
                == [CheckpointLayout.replacedName(step: 6), "step-00000003", "step-00000004", "step-00000006"])
        #expect(lines.count == 4 && lines.allSatisfy { !$0.contains("\n") })
        #expect(lines.contains("restored step 4 from .step-00000004.replaced: a commit replacing it was interrupted"), "\(lines)")
        #expect(lines.contains { $0.hasPrefix("removed .step-00000005.replaced: ") && $0.contains("does not verify") }, "\(lines)")
    }

    @Test func retentionKeepsTheLastKTheBestKAndAlwaysTheNewest() throws {
        let losses: [Int: Double?] = [1: 3.0, 2: 1.0, 3: 2.0, 4: nil, 5: 2.5, 6: nil]
        let all = losses.map { (step: $0.key, validationLoss: $0.value) }
        #expect(CheckpointRetention(keepLast: 2, keepBest: 0).kept(all) == [5, 6])
        #expect(CheckpointRetention(keepLast: 2, keepBest: 2).kept(all) == [2, 3, 5, 6])
        #expect(CheckpointRetention(keepLast: 1, keepBest: 1).kept(all) == [2, 6])
        #expect(CheckpointRetention(keepLast: 0, keepBest: 1).kept(all) == [1, 2, 3, 4, 5, 6], "keep 0 keeps everything")
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let store = CheckpointStore(root: directory.url)
        for (step, loss) in losses.sorted(by: { $0.key < $1.key }) { try store.write(Self.contents(step: step, validationLoss: loss)) }
        let removed = CheckpointRetention(keepLast: 1, keepBest: 2).apply(root: directory.url)
        #expect(store.complete().map(\.step) == [2, 3, 6])
        #expect(removed.map(\.lastPathComponent) == ["step-00000001", "step-00000004", "step-00000005"])
        BackgroundDeletions.shared.waitForAll()   // the files are unlinked in the background
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() == ["step-00000002", "step-00000003", "step-00000006"])
    }

    /// What `tessera ckpt list` shows: each checkpoint's step, layout, validation loss, and
    /// unfinished ones marked as such.
    @Test func summariesNameStepLayoutAndUnfinishedCheckpoints() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let sink = DirectoryCheckpointSink(root: directory.url)
        #expect(Self.deliverConcurrently(Self.threeRankParts(Self.contents(step: 4, validationLoss: 1.5)), to: sink).allSatisfy { $0 == nil })
        try FileManager.default.createDirectory(atPath: directory.file(".step-00000006.partial"), withIntermediateDirectories: true)
        let all = CheckpointSummary.all(root: directory.url)
        #expect(all.map(\.step) == [4, 6] && all.map(\.complete) == [true, false])
        #expect(all[0].layout == "3 ranks: data 2 × sequence 1 × expert 1")
        #expect(all[0].state?.validationLoss == 1.5 && all[0].bytes > 0)
    }

    @Test func safetensorsHeaderIsAlignedAndSelfDescribing() throws {
        let data = try SafeTensors.encode(StateDict([("a", Tensor(shape: [1, 3], scalars: [1, 2, 3]))]), metadata: ["format": "pt"])
        let headerLength = data.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        #expect((8 + Int(headerLength)) % 8 == 0)
        let header = String(decoding: data.subdata(in: 8..<(8 + Int(headerLength))), as: UTF8.self)
        #expect(header.contains("\"dtype\":\"F32\"") && header.contains("\"shape\":[1,3]") && header.contains("\"data_offsets\":[0,12]"))
        #expect(try SafeTensors.decode(data, path: "x").tensors["a"]?.scalars == [1, 2, 3])
    }
}
