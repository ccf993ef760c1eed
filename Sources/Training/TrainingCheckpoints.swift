import CheckpointService
import Checkpointing
import Collectives
import Foundation
import Models
import TensorCore
import TrainingConfig

/// Saving and resuming a run's checkpoints.
///
/// Saving: every rank hands the tensors it owns to `sink` from its own writer thread
/// (`CheckpointWriter`), at most one save in flight. Resuming: rank 0 reads the newest complete
/// checkpoint as whole tensors (fetched from `sink`) and the others receive what they hold by
/// broadcast, so other nodes need no shared disk and any layout can resume any checkpoint.
public struct TrainingCheckpoints {
    /// The run's checkpoint directory (the directory sink's root).
    public let store: CheckpointStore
    public let sink: CheckpointSink
    public let world: Communicator
    let writer = CheckpointWriter()

    var isWriter: Bool { world.rank == 0 }

    /// The checkpoints of the run `config` describes: its `run.dir/checkpoints`, written through
    /// `sink`, or without one through the sink the config names (`CheckpointSinks.make`).
    public init(config: RunConfig, world: Communicator, sink: CheckpointSink?) throws {
        let options = CheckpointSinkOptions(config: config, identity: "rank \(world.rank) of \(world.size)")
        self.init(store: CheckpointStore(root: options.directory), sink: try sink ?? CheckpointSinks.make(options), world: world)
    }

    init(store: CheckpointStore, sink: CheckpointSink, world: Communicator) {
        self.store = store; self.sink = sink; self.world = world
    }

    /// Each parameter's place in the whole model, from its placement.
    static func shards(of parameters: ParameterSet) -> [String: TensorShard] {
        Dictionary(uniqueKeysWithValues: parameters.entries.map { e in
            (e.name, TensorShard(globalShape: e.placement.globalShape(local: e.shape), offset: e.placement.globalOffset(local: e.shape),
                                 axis: e.placement.shardAxis?.rawValue))
        })
    }

    /// This rank's part of the checkpoint of `step`, encoded straight out of the buffers (one
    /// copy; the writer thread only writes or sends it): the tensors of `parameters` it owns (the
    /// lowest world rank among those holding the same tensor: rank 0 for replicated ones, expert
    /// replica 0 for experts) and their moments in `optimizer`; rank 0 adds the index (every
    /// rank's tensor names are gathered, not their values) and the files `metadata` makes of
    /// the weight map. Every rank calls it (the names travel by all-gather).
    public static func part(step: Int, grid: ProcessGrid, parameters p: ParameterSet, optimizer: Optimizer,
                     metadata: (_ weightMap: [String: String]) throws -> [CheckpointFile]) throws -> CheckpointPart {
        let owned = p.entries.filter { grid.replicas(ofShardsAlong: $0.placement.shardAxis).rank == 0 }
        let world = grid.world
        let names = try world.allGatherBytes(Array(owned.map(\.name).joined(separator: "\n").utf8))
        let placed = shards(of: p)
        let whole = try optimizer.wholeMoments()   // gathered from their owners under parallel.zero ≥ 1
        var tensors: [SafeTensors.Source] = [], moments: [SafeTensors.Source] = [], shards: [String: TensorShard] = [:]
        func source(_ name: String, _ buffer: FloatBuffer, _ e: ParameterSet.Entry) -> SafeTensors.Source {
            SafeTensors.Source(name: name, shape: e.shape, scalars: UnsafeBufferPointer(rebasing: buffer.buffer[e.range]))
        }
        for e in owned {
            tensors.append(source(e.name, p.values, e))
            moments.append(source(e.name + ".exp_avg", whole[0], e))
            moments.append(source(e.name + ".exp_avg_sq", whole[1], e))
            shards[e.name] = placed[e.name]
        }
        var files: [CheckpointFile] = []
        if world.rank == 0 {
            var weightMap: [String: String] = [:]
            for (rank, list) in names.enumerated() {
                for name in String(decoding: list, as: UTF8.self).split(separator: "\n") {
                    weightMap[String(name)] = CheckpointLayout.modelFile(rank: rank, ranks: world.size)
                }
            }
            files = try metadata(weightMap)
        }
        return try withExtendedLifetime(whole) {
            try CheckpointShardSnapshot.part(step: step, rank: world.rank, ranks: world.size, model: tensors, optimizer: moments,
                                             shards: shards, metadataFiles: files)
        }
    }

    /// Starts delivering `part` (already encoded) on the writer thread; its receipt says
    /// whether the step is committed, and where.
    public func submit(_ part: CheckpointPart) {
        let sink = self.sink
        writer.submit(step: part.step) { try sink.deliver(part) }
    }

    /// Readies the sink on every rank (`CheckpointSink.prepare`; `owner`: this rank holds the
    /// run directory) before anyone saves; a failure on any rank stops every rank.
    func prepare(owner: Bool, reporter: ProgressReporter?) throws {
        var failure: Error?
        do { try sink.prepare(owner: owner).forEach { reporter?.note($0) } } catch {
            failure = TrainingError.checkpointSinkUnusable(location: sink.location, reason: "\(error)")
        }
        try throwOnEveryRank(failure)
    }

    /// Waits until no rank has a save in flight; returns the step of the save waited for and
    /// the seconds this rank waited (nil when none was in flight anywhere). Every rank calls it.
    ///
    /// The ranks wait together, in rounds of a short local wait and an all-gather of "still
    /// saving", rather than each for its own writer and then in a collective: a save slower
    /// than `parallel.timeout_seconds` on one rank (rank 0 committing, a slow disk or service)
    /// would otherwise leave the ranks done sooner inside a collective past its deadline. The
    /// save itself is bounded by its sink's deadlines (markers, service I/O); a write that makes
    /// no progress at all is not, so every `world.timeoutSeconds` of waiting `note` (rank 0's
    /// reporter) is told which ranks are still saving.
    @discardableResult
    func waitForSavesOnEveryRank(pollSeconds: Double = 0.05, note: ((String) -> Void)? = nil) throws -> (step: Int, seconds: Double)? {
        let start = Date()
        var waitedFor: Int?
        var nextNote = world.timeoutSeconds
        while true {
            if let step = writer.inFlight { waitedFor = step }
            writer.waitForInFlight(limit: pollSeconds)
            let saving = try world.allGather(Int64(writer.inFlight == nil ? 0 : 1))
            let ranks = saving.enumerated().filter { $0.element != 0 }.map(\.offset)
            if ranks.isEmpty { break }
            if waitedFor == nil { waitedFor = writer.lastSubmitted }
            let waited = Date().timeIntervalSince(start)
            if waited >= nextNote {
                note?(String(format: "the checkpoint of step %d is still being written on rank%@ %@ after %.0f s; training waits for it",
                             waitedFor ?? -1, ranks.count == 1 ? "" : "s", ranks.map(String.init).joined(separator: ", "), waited))
                nextNote += world.timeoutSeconds
            }
        }
        return waitedFor.map { ($0, Date().timeIntervalSince(start)) }
    }

    /// Before a save: waits until no rank has one in flight (rank 0's `reporter` says so) and
    /// reports a failed previous save on every rank. Every rank calls it; `step` is the save's.
    func prepareNext(step: Int, reporter: ProgressReporter?) throws {
        if let waited = try waitForSavesOnEveryRank(note: { reporter?.note($0) }) {
            reporter?.note(String(format: "checkpoint of step %d waited %.2f s for the checkpoint of step %d to finish", step, waited.seconds, waited.step))
        }
        try checkFailures()
    }

    /// Waits for the save in flight and reports any failure on every rank; returns, on rank 0,
    /// the newest checkpoint committed since the last look (nil elsewhere). Every rank calls it.
    func finish(reporter: ProgressReporter?) throws -> URL? {
        try waitForSavesOnEveryRank(note: { reporter?.note($0) })
        try checkFailures()
        // Through the service every rank's part has now arrived: the steps are committed there.
        return committed(reporter: reporter, saying: "committed on").last
    }

    /// Checkpoints committed since the last look (rank 0 knows their directories), without
    /// waiting. Through the service rank 0 only knows its own part arrived: it says so.
    func takeCommitted(reporter: ProgressReporter?) -> [URL] {
        committed(reporter: reporter, saying: "sent to")
    }

    private func committed(reporter: ProgressReporter?, saying verb: String) -> [URL] {
        let receipts = writer.takeCommitted()
        for receipt in receipts where isWriter && receipt.directory == nil {
            reporter?.note("checkpoint of step \(receipt.step) \(verb) \(receipt.location)")
        }
        return receipts.filter(\.committed).compactMap(\.directory)
    }

    /// Every rank's writer failure, after each waited for its own save. Every rank calls it.
    func checkFailures() throws {
        try throwOnEveryRank(writer.takeFailure()?.error)
    }

    /// A rank whose `failure` is set throws it, the others an error naming the ranks that
    /// failed. Every rank calls it.
    func throwOnEveryRank(_ failure: Error?) throws {
        let flags = try world.allGather(Int64(failure == nil ? 0 : 1))
        if let failure { throw failure }
        let failed = flags.enumerated().filter { $0.element != 0 }.map(\.offset)
        if !failed.isEmpty { throw TrainingError.checkpointFailedOnOtherRanks(ranks: failed, step: nil) }
    }

    /// The newest complete checkpoint's contents (or those of step `chosen`) on rank 0 (nil
    /// elsewhere and when there is none). `check` runs on rank 0 and may throw; any failure reaches every rank as the same
    /// error. Rank 0 fetches and reads on its own thread while every rank waits in short
    /// collective rounds (`onRankZero`), so a download or read longer than
    /// `parallel.timeout_seconds` trips no collective deadline.
    public func loadLatest(step chosen: Int? = nil, check: @escaping (URL, CheckpointContents) throws -> Void) throws -> (found: Bool, contents: CheckpointContents?) {
        var failure: Error?
        var contents: CheckpointContents?
        let sink = self.sink
        let outcome = try onRankZero { () throws -> CheckpointContents? in
            guard let step = try chosen ?? sink.latestStep() else { return nil }
            let latest = try sink.fetch(step: step)
            let loaded = try CheckpointStore.read(latest)
            try check(latest, loaded)
            return loaded
        }
        switch outcome {
        case .success(let loaded)?: contents = loaded
        case .failure(let error)?: failure = error
        case nil: break
        }
        let problem = failure.map { "\($0)" } ?? ""
        let message = String(decoding: try world.broadcastBytes(Array(problem.utf8), root: 0), as: UTF8.self)
        if let failure { throw failure }   // rank 0 keeps its typed error
        if !message.isEmpty { throw TrainingError.resumeFailed(message: message) }
        var found: [Int64] = [contents == nil ? 0 : 1]
        try found.withUnsafeMutableBytes { try world.broadcast($0, root: 0) }
        return (found[0] == 1, contents)
    }

    /// Runs `work` on rank 0, on a thread of its own, while every rank (rank 0's calling
    /// thread included) waits in rounds of a short wait and an all-reduce of "rank 0 still
    /// working": no rank sits in one collective while rank 0 works alone for longer than the
    /// collective deadline. Returns the outcome on rank 0, nil elsewhere. Every rank calls it.
    func onRankZero<T>(pollSeconds: Double = 0.05, _ work: @escaping () throws -> T) throws -> Result<T, Error>? {
        let job = isWriter ? RankZeroJob(work) : nil
        job?.start()
        while true {
            let working = job.map { !$0.wait(seconds: pollSeconds) } ?? false
            if try world.allReduce(working ? 1 : 0, op: .max) == 0 { break }
        }
        return job?.result
    }

    /// Copies rank 0's `buffers` to every rank.
    public func broadcast(_ buffers: [FloatBuffer]) throws {
        for buffer in buffers {
            try world.broadcast(UnsafeMutableRawBufferPointer(start: buffer.pointer, count: buffer.count * 4), root: 0)
        }
    }

    /// Copies rank 0's integers to every rank.
    public func broadcast(_ values: [Int]) throws -> [Int] {
        var wide = values.map(Int64.init)
        try wide.withUnsafeMutableBytes { try world.broadcast($0, root: 0) }
        return wide.map(Int.init)
    }
}

/// Work rank 0 runs on a thread of its own (`TrainingCheckpoints.onRankZero`); the calling
/// thread reads `result` only after `wait` said it is done.
final class RankZeroJob<T>: @unchecked Sendable {
    private let work: () throws -> T
    private let done = DispatchSemaphore(value: 0)
    private var finished = false
    private(set) var result: Result<T, Error>?

    init(_ work: @escaping () throws -> T) { self.work = work }

    func start() {
        let thread = Thread { [self] in
            result = Result { try work() }
            done.signal()
        }
        thread.name = "tessera-rank0-job"
        thread.start()
    }

    /// Whether the work has finished, waiting up to `seconds` for it.
    func wait(seconds: Double) -> Bool {
        if !finished { finished = done.wait(timeout: .now() + seconds) == .success }
        return finished
    }
}

extension CheckpointSinkOptions {
    /// The sink of the run `config` describes: `checkpoint.service` (the token from
    /// TESSERA_JOB_TOKEN, downloads into `run.dir/checkpoint-cache`), else `run.dir/checkpoints`
    /// with the config's retention and collective deadline.
    public init(config: RunConfig, identity: String) {
        let run = URL(fileURLWithPath: config.run.dir)
        self.init(directory: run.appendingPathComponent("checkpoints"), service: config.checkpoint.service,
                  cacheDirectory: run.appendingPathComponent("checkpoint-cache"), identity: identity,
                  timeoutSeconds: config.parallel.timeoutSeconds,
                  retention: CheckpointRetention(keepLast: config.checkpoint.keep, keepBest: config.checkpoint.keepBest),
                  retrySeconds: config.checkpoint.serviceRetrySeconds)
    }
}
