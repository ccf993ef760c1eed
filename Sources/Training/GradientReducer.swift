import Collectives
import Foundation
import TensorCore

/// Sums gradients over the data axis in buckets.
///
/// The backward pass reports each parameter range as its gradient becomes final (descending
/// offsets, adjacent). Adjacent ranges are merged into buckets of about `bucketBytes`; with
/// `overlap`, each full bucket is all-reduced at once on a dedicated communication thread while
/// the backward pass continues, otherwise all buckets are reduced by `finish()`. The trainer
/// makes no other collective call between the first `ready` and `finish()`, so the
/// communicator is only ever used by one thread at a time.
public final class GradientReducer {
    let comm: Communicator
    let gradients: FloatBuffer
    let bucketFloats: Int
    let overlap: Bool
    private var open: Range<Int>?
    private var queued: [Range<Int>] = []
    private var outstanding = 0
    private var failure: Error?
    private let condition = NSCondition()
    private var worker: Thread?
    private var stopping = false

    public init(comm: Communicator, gradients: FloatBuffer, bucketBytes: Int, overlap: Bool) {
        self.comm = comm
        self.gradients = gradients
        bucketFloats = max(1, bucketBytes / 4)
        self.overlap = overlap && comm.size > 1
        if self.overlap {
            let thread = Thread { [unowned self] in self.work() }
            thread.name = "tessera-gradient-allreduce"
            worker = thread
            thread.start()
        }
    }

    deinit {
        condition.lock(); stopping = true; condition.broadcast(); condition.unlock()
        while let worker, !worker.isFinished { usleep(100) }
    }

    /// Called by the backward pass with a range whose gradient is final.
    public func ready(_ range: Range<Int>) {
        guard comm.size > 1 else { return }
        if let current = open, range.upperBound == current.lowerBound {
            open = range.lowerBound..<current.upperBound
        } else {
            if let current = open { submit(current) }
            open = range
        }
        if let current = open, current.count >= bucketFloats {
            submit(current)
            open = nil
        }
    }

    /// Reduces what is left and waits for every bucket; rethrows the first failure.
    public func finish() throws {
        guard comm.size > 1 else { return }
        if let current = open { submit(current); open = nil }
        if !overlap {
            let buckets = queued
            queued.removeAll()
            for bucket in buckets { try reduce(bucket) }
            return
        }
        condition.lock()
        defer { condition.unlock() }
        while outstanding > 0 && failure == nil { condition.wait() }
        if let failure { self.failure = nil; throw failure }
    }

    private func submit(_ range: Range<Int>) {
        guard overlap else { queued.append(range); return }   // reduced by finish()
        condition.lock()
        queued.append(range)
        outstanding += 1
        condition.broadcast()
        condition.unlock()
    }

    private func reduce(_ range: Range<Int>) throws {
        try comm.allReduce(UnsafeMutableBufferPointer(start: gradients.pointer + range.lowerBound, count: range.count), op: .sum)
    }

    private func work() {
        while true {
            condition.lock()
            while queued.isEmpty && !stopping { condition.wait() }
            if stopping && queued.isEmpty { condition.unlock(); return }
            let bucket = queued.removeFirst()
            let skip = failure != nil
            condition.unlock()
            var error: Error?
            if !skip { do { try reduce(bucket) } catch let e { error = e } }
            condition.lock()
            if let error, failure == nil { failure = error }
            outstanding -= 1
            condition.broadcast()
            condition.unlock()
        }
    }
}
