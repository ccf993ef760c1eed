import Foundation
import Testing
import CheckpointService
import Checkpointing
import Collectives
import TensorCore
import Training
import TrainingConfig
import _TestSupport

/// Sharded checkpoints of whole runs: each rank writes what it owns exactly once, a checkpoint
/// resumes on another layout with the losses of a run that never stopped, saving runs beside
/// training, and a failed save is reported.
@Suite struct ShardedCheckpointTests {
    /// The tiny dense model, or with `moe` (or an expert axis) its MoE version.
    static func overrides(data: String, run: String, steps: Int, expert: Int, moe: Bool = false) -> [String] {
        expert > 1 || moe ? ExpertParallelTrainingTests.moeOverrides(data: data, run: run, steps: steps, expert: expert)
                          : tinyOverrides(data: data, run: run, steps: steps)
    }

    /// Model tensor (or moment) name → files holding it, over the checkpoint's shard files.
    static func holders(in url: URL, prefix: String) throws -> [String: [String]] {
        var out: [String: [String]] = [:]
        for file in try FileManager.default.contentsOfDirectory(atPath: url.path) where file.hasPrefix(prefix) {
            for name in try SafeTensors.read(url.appendingPathComponent(file)).tensors.names { out[name, default: []].append(file) }
        }
        return out
    }

    @Test(arguments: [(2, 1), (3, 1), (2, 2), (4, 2)])
    func eachTensorIsWrittenOnceByTheLowestRankHoldingIt(ranks: Int, expert: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: Self.overrides(data: data, run: directory.file("run"), steps: 2, expert: expert))
        let runs = try trainInProcess(config, ranks: ranks, steps: 2, saveCheckpoint: true)
        let url = try #require(runs[0].checkpoint)
        let model = try Self.holders(in: url, prefix: "model-"), moments = try Self.holders(in: url, prefix: "optimizer-")
        let names = Set(runs.flatMap(\.namedParameters.keys))
        #expect(Set(model.keys) == names)
        #expect(model.values.allSatisfy { $0.count == 1 }, "written more than once: \(model.filter { $0.value.count > 1 })")
        #expect(Set(moments.keys) == Set(names.flatMap { [$0 + ".exp_avg", $0 + ".exp_avg_sq"] }))
        #expect(moments.values.allSatisfy { $0.count == 1 })
        // Replicated tensors by rank 0; each expert by the lowest rank of the first replica holding it.
        let writers = (0..<expert).map { String(format: "model-%05d-of-%05d.safetensors", $0 + 1, ranks) }
        #expect(Set(model.values.map { $0[0] }) == Set(writers))
        let index = try CheckpointIndex.read(url)
        #expect(index.weightMap == model.mapValues { $0[0] }, "the index names the file that holds each tensor")
        for (name, files) in model {
            let rank = Int(files[0].dropFirst(6).prefix(5))! - 1
            #expect(runs[rank].namedParameters[name] != nil, "\(files[0]) holds \(name), which rank \(rank) does not hold")
        }
        // Read back whole, it equals what the ranks hold.
        let contents = try CheckpointStore.read(url)
        for run in runs { for (name, values) in run.namedParameters { #expect(contents.model[name]!.scalars == values, "\(name)") } }
    }

    /// A checkpoint written on one layout resumes on another: 2 → 1, 1 → 2, 2 → 3 ranks, and
    /// with experts 2 → 1 and 1 → 2, continuing with the uninterrupted run's losses.
    @Test(arguments: [(2, 1, 1, 1), (1, 1, 2, 1), (2, 1, 3, 1), (2, 2, 1, 1), (1, 1, 2, 2)])
    func resumingOnAnotherLayoutContinuesTheUninterruptedRun(before: Int, expertBefore: Int, after: Int, expertAfter: Int) throws {
        let moe = expertBefore > 1 || expertAfter > 1
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let steps = 10, stop = 4
        func config(_ run: String) throws -> RunConfig {
            try RunConfig(file: nil, overrides: Self.overrides(data: data, run: directory.file(run), steps: steps, expert: expertBefore, moe: moe))
        }
        let (straight, interrupted) = (try config("straight"), try config("interrupted"))
        let first = InProcessCommunicator.run(size: before, timeoutSeconds: 60) { comm -> ([Double], [Double]) in
            (try Trainer(config: straight, world: comm).run(resume: false).losses,
             try Trainer(config: interrupted, world: comm).run(resume: false, stopAt: stop).losses)
        }
        let (reference, stopped) = try first[0].get()
        #expect(stopped == Array(reference.prefix(stop)))
        let moved = try interrupted.applying(["parallel.expert=\(expertAfter)"])
        let second = InProcessCommunicator.run(size: after, timeoutSeconds: 60) { comm in try Trainer(config: moved, world: comm).run(resume: true).losses }
        for result in second {
            let resumed = try result.get()
            #expect(resumed.count == steps - stop)
            #expect(maxRelativeError(resumed, Array(reference.dropFirst(stop))) < 1e-5, "resumed on \(after) ranks: \(resumed) vs \(reference)")
        }
    }

    /// A sink whose deliveries wait for a signal, to hold a save in flight.
    final class GatedSink: CheckpointSink {
        let inner: DirectoryCheckpointSink
        let gate = DispatchSemaphore(value: 0)
        init(root: URL) { inner = DirectoryCheckpointSink(root: root) }
        var location: String { inner.location }
        var directory: URL? { inner.directory }
        func prepare(owner: Bool) throws -> [String] { try inner.prepare(owner: owner) }
        func deliver(_ part: CheckpointPart) throws -> CheckpointReceipt { gate.wait(); return try inner.deliver(part) }
        func latestStep() throws -> Int? { try inner.latestStep() }
        func fetch(step: Int) throws -> URL { try inner.fetch(step: step) }
    }

    /// Training goes on while a checkpoint is written; a second save waits for the first and
    /// the log says so; both are committed.
    @Test func savingRunsBesideTrainingAndASecondSaveWaitsForTheFirst() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 10))
        let sink = GatedSink(root: directory.url.appendingPathComponent("run/checkpoints"))
        let trainer = try Trainer(config: config, world: SingleProcessCommunicator(), checkpointSink: sink)
        FileManager.default.createFile(atPath: directory.file("log"), contents: nil)
        trainer.reporter = ProgressReporter(output: FileHandle(forWritingAtPath: directory.file("log"))!, interactive: false)
        try trainer.trainStep()
        try trainer.startCheckpoint()                  // step 1, held at the gate
        try trainer.trainStep()                        // training goes on meanwhile
        #expect(try sink.latestStep() == nil)
        let opened = Date()
        Thread { Thread.sleep(forTimeInterval: 0.3); sink.gate.signal() }.start()
        try trainer.startCheckpoint()                  // step 2 waits for step 1
        #expect(Date().timeIntervalSince(opened) >= 0.25)
        #expect(try sink.latestStep() == 1)
        sink.gate.signal()
        let last = try trainer.finishCheckpoints()
        #expect(last?.lastPathComponent == "step-00000002")
        #expect(CheckpointStore(root: sink.inner.root).complete().map(\.step) == [1, 2])
        let log = try String(contentsOfFile: directory.file("log"), encoding: .utf8)
        #expect(log.contains("checkpoint of step 2 waited"), "\(log)")
    }

    /// Rank 0 learns of a commit from the sink's receipt, not by looking on disk: a sink that
    /// commits outside run.dir/checkpoints is reported where it says.
    @Test func theCommittedCheckpointIsTheOneTheReceiptNames() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 4))
        let elsewhere = DirectoryCheckpointSink(root: directory.url.appendingPathComponent("elsewhere"))
        let trainer = try Trainer(config: config, world: SingleProcessCommunicator(), checkpointSink: elsewhere)
        try trainer.trainStep()
        #expect(try trainer.saveCheckpoint()?.path == elsewhere.root.appendingPathComponent("step-00000001").path)
        #expect(!FileManager.default.fileExists(atPath: directory.file("run/checkpoints")))
    }

    /// The run's sink comes from its config through the one factory (`CheckpointSinks`).
    @Test func theRunsSinkIsBuiltFromItsConfig() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 4)
                                   + ["checkpoint.service=10.0.0.5:29600", "checkpoint.keep=2", "checkpoint.service_retry_seconds=7"])
        var options = CheckpointSinkOptions(config: config, identity: "rank 0 of 1")
        #expect(options.directory.path == directory.file("run/checkpoints") && options.cacheDirectory.path == directory.file("run/checkpoint-cache"))
        #expect(options.service == "10.0.0.5:29600" && options.retrySeconds == 7 && options.retention.keepLast == 2)
        options.token = String(repeating: "4d", count: 16)
        #expect(try CheckpointSinks.make(options).location == "the checkpoint service at 10.0.0.5:29600")
        options.token = ""
        #expect(throws: CheckpointServiceError.unusable(setting: "checkpoint.service", value: "10.0.0.5:29600",
                                                        reason: "no job token for the checkpoint service: set TESSERA_JOB_TOKEN to the service's token")) {
            try CheckpointSinks.make(options)
        }
        var local = config
        local.checkpoint.service = ""
        let sink = try Trainer(config: local, world: SingleProcessCommunicator()).checkpointSink
        #expect((sink as? DirectoryCheckpointSink)?.retention == CheckpointRetention(keepLast: 2, keepBest: config.checkpoint.keepBest))
    }

    /// Takes `seconds` to deliver each part (a slow disk, or a service far away), then accepts it.
    final class SlowSink: CheckpointSink {
        let seconds: Double
        init(seconds: Double) { self.seconds = seconds }
        let location = "a slow sink", directory: URL? = nil
        func prepare(owner: Bool) throws -> [String] { [] }
        func deliver(_ part: CheckpointPart) throws -> CheckpointReceipt {
            Thread.sleep(forTimeInterval: seconds)
            return CheckpointReceipt(step: part.step, committed: part.rank == 0, location: location)
        }
        func latestStep() throws -> Int? { nil }
        func fetch(step: Int) throws -> URL { throw CheckpointError.missing(path: "step \(step)", hint: "none kept") }
    }

    /// A save on rank 0 longer than the collective deadline: the other rank, whose save is
    /// done, waits with it (in short collective rounds) instead of sitting in a collective past
    /// its deadline; the second save and the end of the run go through on both ranks.
    @Test func aSaveSlowerThanTheCollectiveDeadlineTripsNoDeadline() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 4))
        let deadline = 1.2
        let started = Date()
        FileManager.default.createFile(atPath: directory.file("log"), contents: nil)
        let results = InProcessCommunicator.run(size: 2, timeoutSeconds: deadline) { comm -> Int in
            let sink: CheckpointSink = comm.rank == 0 ? SlowSink(seconds: 2 * deadline) : AcceptingSink()
            let trainer = try Trainer(config: config, world: comm, checkpointSink: sink)
            if comm.rank == 0 { trainer.reporter = ProgressReporter(output: FileHandle(forWritingAtPath: directory.file("log"))!, interactive: false) }
            try trainer.trainStep()
            try trainer.startCheckpoint()     // rank 0's save outlasts the deadline
            try trainer.trainStep()
            try trainer.startCheckpoint()     // waits for it on every rank
            try trainer.finishCheckpoints()
            return trainer.step
        }
        #expect(try results.map { try $0.get() } == [2, 2])
        #expect(Date().timeIntervalSince(started) >= 2 * 2 * deadline - 0.5, "both saves were waited for")
        // Past the deadline, the wait is not silent: rank 0 says who is still writing.
        let log = try String(contentsOfFile: directory.file("log"), encoding: .utf8)
        #expect(log.split(separator: "\n").contains { $0.contains("the checkpoint of step 1 is still being written on rank 0 after ")
                                                       && $0.hasSuffix(" s; training waits for it") }, "\(log)")
        #expect(log.contains("checkpoint of step 2 waited"), "\(log)")
    }

    /// A directory sink whose `fetch` takes `seconds` (a download from a service far away).
    final class SlowFetchSink: CheckpointSink {
        let inner: DirectoryCheckpointSink
        let seconds: Double
        init(root: URL, seconds: Double) { inner = DirectoryCheckpointSink(root: root); self.seconds = seconds }
        var location: String { inner.location }
        var directory: URL? { inner.directory }
        func prepare(owner: Bool) throws -> [String] { try inner.prepare(owner: owner) }
        func deliver(_ part: CheckpointPart) throws -> CheckpointReceipt { try inner.deliver(part) }
        func latestStep() throws -> Int? { try inner.latestStep() }
        func fetch(step: Int) throws -> URL { Thread.sleep(forTimeInterval: seconds); return try inner.fetch(step: step) }
    }

    /// Rank 0 fetching the checkpoint to resume for longer than the collective deadline: the
    /// other rank waits with it in short collective rounds, and both resume.
    @Test func aResumeFetchSlowerThanTheCollectiveDeadlineTripsNoDeadline() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 6))
        for result in InProcessCommunicator.run(size: 2, timeoutSeconds: 60, { comm in try Trainer(config: config, world: comm).run(resume: false, stopAt: 2) }) {
            _ = try result.get()
        }
        let deadline = 1.2
        let root = directory.url.appendingPathComponent("run/checkpoints")
        let resumed = InProcessCommunicator.run(size: 2, timeoutSeconds: deadline) { comm -> Int? in
            try Trainer(config: config, world: comm, checkpointSink: SlowFetchSink(root: root, seconds: 2 * deadline)).resumeFromLatest()
        }
        #expect(try resumed.map { try $0.get() } == [2, 2])
    }

    /// Records parts and never fails.
    final class AcceptingSink: CheckpointSink {
        let location = "a sink that keeps nothing", directory: URL? = nil
        func prepare(owner: Bool) throws -> [String] { [] }
        func deliver(_ part: CheckpointPart) throws -> CheckpointReceipt { CheckpointReceipt(step: part.step, committed: false, location: location) }
        func latestStep() throws -> Int? { nil }
        func fetch(step: Int) throws -> URL { throw CheckpointError.missing(path: "step \(step)", hint: "none kept") }
    }

    final class FailingSink: CheckpointSink {
        let location = "a full disk", directory: URL? = nil
        func prepare(owner: Bool) throws -> [String] { [] }
        func deliver(_ part: CheckpointPart) throws -> CheckpointReceipt { throw CheckpointError.writeFailed(path: "/full/disk/step-\(part.step)", reason: "No space left on device") }
        func latestStep() throws -> Int? { nil }
        func fetch(step: Int) throws -> URL { throw CheckpointError.missing(path: "step \(step)", hint: "none kept") }
    }

    /// A save that fails on the writer thread stops the run at the next save on every rank:
    /// the failing rank with its own error, the others naming it.
    @Test func aFailedAsynchronousSaveIsReportedOnEveryRank() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 8) + ["checkpoint.every=2"])
        let results = InProcessCommunicator.run(size: 2, timeoutSeconds: 60) { comm -> Int in
            let sink: CheckpointSink = comm.rank == 1 ? FailingSink() : AcceptingSink()
            let trainer = try Trainer(config: config, world: comm, checkpointSink: sink)
            do { _ = try trainer.run(resume: false) } catch { throw error }
            return trainer.step
        }
        #expect(throws: CheckpointError.writeFailed(path: "/full/disk/step-2", reason: "No space left on device")) { try results[1].get() }
        #expect(throws: TrainingError.checkpointFailedOnOtherRanks(ranks: [1], step: nil)) { try results[0].get() }
    }

    /// Each checkpoint records the validation loss measured at its step (for keep_best).
    @Test func checkpointsRecordTheirValidationLossAndKeepBestKeepsTheLowest() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 8)
            + ["checkpoint.every=2", "eval.every=2", "checkpoint.keep=1", "checkpoint.keep_best=2"])
        _ = try Trainer(config: config, world: SingleProcessCommunicator()).run(resume: false)
        let metrics = try String(contentsOfFile: directory.file("run/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
            .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        var validation: [Int: Double] = [:]
        for record in metrics { if let step = record["step"] as? Int, let loss = record["val_loss"] as? Double { validation[step] = loss } }
        let best = validation.sorted { $0.value < $1.value }.prefix(2).map(\.key)
        let kept = CheckpointStore(root: URL(fileURLWithPath: directory.file("run/checkpoints"))).complete()
        #expect(Set(kept.map(\.step)) == Set(best + [8]))
        for c in kept { #expect(CheckpointStore.validationLoss(of: c.url) == validation[c.step]) }
    }
}
