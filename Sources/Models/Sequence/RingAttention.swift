import Collectives
import Foundation
import Kernels
import TensorCore

/// Ring attention over the sequence ranks of one group: each rank holds the queries, keys and
/// values of its own positions; K/V blocks travel around the ring (rank r sends to r + 1 and
/// receives from r − 1), and each rank computes its queries against every block it sees, masked
/// by global positions, merging the partial (O, L) with `AttentionMerge`.
///
/// Backward: D = rowsum(dO ⊙ O) of the final output, then the K/V blocks travel again, each
/// carrying the dK/dV accumulated for it so far; after P transfers a block and its gradients are
/// back at their owner. Each step is one key block's share computed with the global L and D.
///
/// Transfers alternate send/receive order by rank parity (even ranks send first, odd ranks
/// receive first), so no rank waits on a peer that is itself waiting to send: deadlock-free on
/// every backend, including ones whose send waits for the receiver. Each K/V transfer runs on a
/// transfer thread while the current block is computed (the communicator is used by that thread
/// alone until it is waited for); in the backward pass a block's dK/dV follow it after its step.
///
/// Layouts as `FlashAttention`: q, o (B, T, Hq, D), k, v (B, T, Hkv, D) with T this rank's tokens.
public final class RingAttention {
    public let batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int
    public let comm: Communicator
    /// Positions of every rank of the group, by rank.
    public let positions: [[Int]]
    /// This rank's queries against the keys of rank s, by s.
    let kernels: [FlashAttention]

    /// Collective over `comm`: every rank of the group passes its own positions, which are
    /// exchanged once.
    public init(batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int, positions mine: [Int], comm: Communicator) throws {
        self.batch = batch; self.length = length; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        self.comm = comm
        let all = try comm.allGatherInts(mine.map(Int32.init), size: comm.size)
        positions = all
        kernels = all.map {
            FlashAttention(batch: batch, queryLength: length, keyLength: length, heads: heads, kvHeads: kvHeads, headDim: headDim,
                           causal: true, queryPositions: mine, keyPositions: $0)
        }
    }

    var kvCount: Int { batch * length * kvHeads * headDim }
    var queryCount: Int { batch * length * heads * headDim }
    var rank: Int { comm.rank }
    var size: Int { comm.size }

    /// o and the global logsumexp L (B, Hq, T) of this rank's queries against every key.
    /// The next K/V block is in flight (on a transfer thread) while the current one is computed.
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        o: UnsafeMutablePointer<Float>, logsumexp: UnsafeMutablePointer<Float>, threads: KernelThreads) throws {
        // The two travelling K/V blocks and one block's partial result live for this call only,
        // so a model's layers share no persistent ring memory.
        let n = kvCount
        var current = FloatBuffer(count: 2 * n), next = FloatBuffer(count: 2 * n)
        let partialO = FloatBuffer(count: queryCount), partialL = FloatBuffer(count: batch * heads * length)
        current.pointer.update(from: k, count: n)
        (current.pointer + n).update(from: v, count: n)
        for step in 0..<size {
            let transfer = step < size - 1 ? startTransfer(from: current.pointer, into: next.pointer, floats: 2 * n, tag: 0x5200 + step) : nil
            let source = (rank - step + size) % size
            if step == 0 {
                kernels[source].forward(q: q, k: k, v: v, o: o, logsumexp: logsumexp, threads: threads)
            } else {
                kernels[source].forward(q: q, k: current.pointer, v: current.pointer + n, o: partialO.pointer,
                                        logsumexp: partialL.pointer, threads: threads)
                AttentionMerge.merge(o: o, logsumexp: logsumexp, with: partialO.pointer, otherLogsumexp: partialL.pointer,
                                     batch: batch, length: length, heads: heads, headDim: headDim, threads: threads)
            }
            if let transfer {
                try transfer.wait()
                swap(&current, &next)
            }
        }
    }

    /// dq (B, T, Hq, D), dk, dv (B, T, Hkv, D), overwritten, from dO and `forward`'s o and L.
    /// The next K/V block travels while the current one is computed; the gradients accumulated
    /// for a block follow it once that step is done.
    public func backward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                         o: UnsafePointer<Float>, logsumexp: UnsafePointer<Float>, dO: UnsafePointer<Float>,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         threads: KernelThreads) throws {
        let n = kvCount
        let rowDot = FloatBuffer(count: batch * heads * length)
        FlashAttention.rowDot(o: o, dO: dO, into: rowDot.pointer, batch: batch, length: length, heads: heads, headDim: headDim,
                              threads: threads)
        // Each buffer: [k | v | dk | dv] of one block.
        var current = FloatBuffer(count: 4 * n), next = FloatBuffer(count: 4 * n)
        let b0 = current.pointer
        b0.update(from: k, count: n)
        (b0 + n).update(from: v, count: n)
        (b0 + 2 * n).update(repeating: 0, count: 2 * n)
        dq.update(repeating: 0, count: queryCount)
        for step in 0..<size {
            let c = current.pointer
            let transfer = step < size - 1 ? startTransfer(from: c, into: next.pointer, floats: 2 * n, tag: 0x5300 + 2 * step) : nil
            let source = (rank - step + size) % size
            kernels[source].backward(q: q, k: c, v: c + n, logsumexp: logsumexp, rowDot: rowDot.pointer, dO: dO,
                                     dq: dq, dk: c + 2 * n, dv: c + 3 * n, accumulate: true, threads: threads)
            guard size > 1 else { break }
            try transfer?.wait()
            // This block's gradients follow it (the last transfer brings every block's home).
            try startTransfer(from: c + 2 * n, into: next.pointer + 2 * n, floats: 2 * n, tag: 0x5300 + 2 * step + 1)
                .wait()
            swap(&current, &next)
        }
        dk.update(from: current.pointer + 2 * n, count: n)
        dv.update(from: current.pointer + 3 * n, count: n)
    }

    /// One ring transfer on its own thread: `floats` from `out` to the next rank, the previous
    /// rank's into `into`. Even ranks send first and odd ranks receive first, so the ring cannot
    /// deadlock even where a send waits for its receiver. Only this thread uses the communicator
    /// until `wait` returns.
    private func startTransfer(from out: UnsafeMutablePointer<Float>, into: UnsafeMutablePointer<Float>, floats: Int,
                               tag: Int) -> RingTransfer {
        let transfer = RingTransfer()
        let (comm, rank, size) = (self.comm, self.rank, self.size)
        let next = (rank + 1) % size, previous = (rank - 1 + size) % size
        let bytes = TransferBytes(out: UnsafeRawBufferPointer(start: out, count: floats * 4),
                                  into: UnsafeMutableRawBufferPointer(start: into, count: floats * 4))
        let thread = Thread {
            do {
                if rank % 2 == 0 {
                    try comm.send(bytes.out, to: next, tag: tag)
                    try comm.receive(bytes.into, from: previous, tag: tag)
                } else {
                    try comm.receive(bytes.into, from: previous, tag: tag)
                    try comm.send(bytes.out, to: next, tag: tag)
                }
            } catch {
                transfer.error = error
            }
            transfer.done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
        return transfer
    }
}

/// The byte ranges of one ring transfer, handed to its thread: the caller keeps both buffers
/// alive, and does not touch them, until the transfer's `wait` returns.
private struct TransferBytes: @unchecked Sendable {
    let out: UnsafeRawBufferPointer
    let into: UnsafeMutableRawBufferPointer
}

/// A transfer in flight; `wait` returns once it is complete and rethrows its failure.
final class RingTransfer: @unchecked Sendable {
    let done = DispatchSemaphore(value: 0)
    var error: Error?

    func wait() throws {
        done.wait()
        if let error { throw error }
    }
}

extension Communicator {
    /// Every rank's equally long list of integers, by rank.
    func allGatherInts(_ mine: [Int32], size: Int) throws -> [[Int]] {
        var out = [Int32](repeating: 0, count: mine.count * size)
        try mine.withUnsafeBytes { input in
            try out.withUnsafeMutableBytes { output in
                try allGather(input, counts: Array(repeating: input.count, count: size), into: output)
            }
        }
        return (0..<size).map { r in out[(r * mine.count)..<((r + 1) * mine.count)].map(Int.init) }
    }
}
