import Collectives
import Foundation
import Models
import TensorCore

/// Sums gradients over the ranks that hold the same copy of each parameter, in buckets.
///
/// Each parameter's placement picks its reduction group: replicated parameters are summed
/// over the whole world, a shard over the ranks holding the same shard. The backward pass
/// reports each parameter range as its gradient becomes final (descending offsets, adjacent);
/// within a group, adjacent ranges are merged into buckets of about `bucketBytes`. With
/// `overlap`, each full bucket is all-reduced at once on a dedicated communication thread
/// while the backward pass continues, otherwise all buckets are reduced by `finish()`. The
/// trainer makes no other collective call between the first `ready` and `finish()`, so each
/// communicator is only ever used by one thread at a time; `parallel.zero` = 3 runs its
/// parameter gathers on the same thread (`submit(job:)`) for the same reason.
public final class GradientReducer {
    private struct Bucket {
        let range: Range<Int>
        let group: Int
    }

    let parameters: ParameterSet
    let bucketFloats: Int
    let overlap: Bool
    /// Each reduction group's communicator (read by the communication thread: never mutated).
    private let comms: [Communicator]
    /// Each group's bucket being filled (backward-pass thread only).
    private var open: [Range<Int>?]
    /// Reduction group of each parameter entry.
    private let groupOfEntry: [Int]
    /// Buckets reduced by `finish()` (without overlap).
    private var queued: [Bucket] = []
    /// The communication thread's queue (with overlap). The thread holds it, not the reducer:
    /// a reducer dropped before its thread has started (a run refused at once) must not be
    /// reached from that thread.
    private let pending = Pending()
    private var worker: Thread?

    private final class Pending {
        let condition = NSCondition()
        var queued: [() throws -> Void] = []
        var outstanding = 0
        /// Jobs submitted and jobs done (in order: the thread runs them first in, first out).
        var submitted = 0, completed = 0
        var failure: Error?
        var stopping = false
    }

    /// Under `parallel.zero` = 2: buckets are reduce-scattered to their owners instead of
    /// all-reduced (`ZeroPartition.reduceScatter`).
    let scatter: ZeroPartition?

    public convenience init(parameters: ParameterSet, grid: ProcessGrid, bucketBytes: Int, overlap: Bool) {
        self.init(parameters: parameters, grid: grid, bucketBytes: bucketBytes, overlap: overlap, scatter: nil)
    }

    init(parameters: ParameterSet, grid: ProcessGrid, bucketBytes: Int, overlap: Bool, scatter: ZeroPartition?) {
        self.parameters = parameters
        self.scatter = scatter
        bucketFloats = max(1, bucketBytes / 4)
        let groups = ReductionGroups(parameters: parameters, grid: grid)
        groupOfEntry = groups.groupOfEntry
        comms = groups.comms
        open = Array(repeating: nil, count: comms.count)
        self.overlap = overlap && comms.contains { $0.size > 1 }
        if self.overlap {
            let pending = self.pending
            let thread = Thread { Self.work(pending) }
            thread.name = "tessera-gradient-allreduce"
            worker = thread
            thread.start()
        }
    }

    deinit {
        pending.condition.lock(); pending.stopping = true; pending.condition.broadcast(); pending.condition.unlock()
        while let worker, !worker.isFinished { usleep(100) }
    }

    /// Called by the backward pass with a range whose gradient is final.
    public func ready(_ range: Range<Int>) {
        var touched = Set<Int>()
        let entries = parameters.entries(overlapping: range)
        for index in entries.indices.reversed() {   // descending offsets, as the backward pass goes
            let piece = max(entries[index].offset, range.lowerBound)..<min(entries[index].range.upperBound, range.upperBound)
            let g = groupOfEntry[index]
            guard !piece.isEmpty, comms[g].size > 1 else { continue }   // a group of one rank has nothing to sum
            touched.insert(g)
            if let current = open[g], piece.upperBound == current.lowerBound {
                open[g] = piece.lowerBound..<current.upperBound
            } else {
                if let current = open[g] { submit(Bucket(range: current, group: g)) }
                open[g] = piece
            }
        }
        for g in touched.sorted() {
            if let current = open[g], current.count >= bucketFloats {
                submit(Bucket(range: current, group: g))
                open[g] = nil
            }
        }
    }

    /// Reduces what is left and waits for every bucket; rethrows the first failure.
    public func finish() throws {
        for g in open.indices {
            if let current = open[g] { submit(Bucket(range: current, group: g)); open[g] = nil }
        }
        if !overlap {
            let buckets = queued
            queued.removeAll()
            for bucket in buckets { try Self.reduce(bucket, parameters: parameters, comms: comms, scatter: scatter) }
            return
        }
        let condition = pending.condition
        condition.lock()
        defer { condition.unlock() }
        while pending.outstanding > 0 && pending.failure == nil { condition.wait() }
        if let failure = pending.failure { pending.failure = nil; throw failure }
    }

    private func submit(_ bucket: Bucket) {
        guard overlap else { queued.append(bucket); return }   // reduced by finish()
        let parameters = self.parameters, comms = self.comms, scatter = self.scatter
        _ = enqueue { try Self.reduce(bucket, parameters: parameters, comms: comms, scatter: scatter) }
    }

    /// Runs `job` (collective calls on the reduction groups) on the communication thread after
    /// the buckets and jobs submitted before it; returns its ticket for `wait`, or nil without
    /// overlap (no thread: the caller runs it itself). Training thread only.
    func submit(job: @escaping () throws -> Void) -> Int? {
        overlap ? enqueue(job) : nil
    }

    /// Waits until the job of `ticket` is done; rethrows the first failure of the thread.
    func wait(for ticket: Int) throws {
        let condition = pending.condition
        condition.lock()
        defer { condition.unlock() }
        while pending.completed < ticket && pending.failure == nil { condition.wait() }
        if let failure = pending.failure { pending.failure = nil; throw failure }
    }

    private func enqueue(_ job: @escaping () throws -> Void) -> Int {
        pending.condition.lock()
        defer { pending.condition.unlock() }
        pending.queued.append(job)
        pending.outstanding += 1
        pending.submitted += 1
        pending.condition.broadcast()
        return pending.submitted
    }

    private static func reduce(_ bucket: Bucket, parameters: ParameterSet, comms: [Communicator], scatter: ZeroPartition?) throws {
        if let scatter {
            // The partition's groups are the reducer's (the same placement kinds, met in the same order).
            try scatter.reduceScatter(bucket.range, group: bucket.group)
            return
        }
        let gradients = parameters.gradients.pointer + bucket.range.lowerBound
        try comms[bucket.group].allReduce(UnsafeMutableBufferPointer(start: gradients, count: bucket.range.count), op: .sum)
    }

    /// The communication thread: runs queued jobs (bucket reductions, parameter gathers) until
    /// the reducer goes away.
    private static func work(_ pending: Pending) {
        let condition = pending.condition
        while true {
            condition.lock()
            while pending.queued.isEmpty && !pending.stopping { condition.wait() }
            if pending.stopping && pending.queued.isEmpty { condition.unlock(); return }
            let job = pending.queued.removeFirst()
            let skip = pending.failure != nil
            condition.unlock()
            var error: Error?
            if !skip { do { try job() } catch let e { error = e } }
            condition.lock()
            if let error, pending.failure == nil { pending.failure = error }
            pending.outstanding -= 1
            pending.completed += 1
            condition.broadcast()
            condition.unlock()
        }
    }
}

/// Each parameter's reduction group: the ranks holding the same copy of it
/// (`ProcessGrid.replicas(ofShardsAlong:)` of its shard axis), one communicator per distinct axis
/// in order of first appearance. The gradient reducer and ZeRO's partition share it, so a bucket's
/// group is the group its owners were cut over.
struct ReductionGroups {
    let comms: [Communicator]
    /// Index into `comms` of each parameter entry.
    let groupOfEntry: [Int]

    init(parameters: ParameterSet, grid: ProcessGrid) {
        var comms: [Communicator] = [], axes: [GridAxis?] = []
        groupOfEntry = parameters.entries.map { entry in
            let axis = entry.placement.shardAxis
            if let i = axes.firstIndex(where: { $0 == axis }) { return i }
            axes.append(axis)
            comms.append(grid.replicas(ofShardsAlong: axis))
            return comms.count - 1
        }
        self.comms = comms
    }
}
