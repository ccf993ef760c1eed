import Collectives
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
/// every backend, including ones whose send waits for the receiver. Transfers are not
/// overlapped with compute.
///
/// Layouts as `FlashAttention`: q, o (B, T, Hq, D), k, v (B, T, Hkv, D) with T this rank's tokens.
public final class RingAttention {
    public let batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int
    public let comm: Communicator
    /// Positions of every rank of the group, by rank.
    public let positions: [[Int]]
    /// This rank's queries against the keys of rank s, by s.
    let kernels: [FlashAttention]
    private let block: FloatBuffer, incoming: FloatBuffer, partialO: FloatBuffer, partialL: FloatBuffer
    private let dqPart: FloatBuffer, dkPart: FloatBuffer, dvPart: FloatBuffer, rowDot: FloatBuffer

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
        let kv = batch * length * kvHeads * headDim, qo = batch * length * heads * headDim
        block = FloatBuffer(count: 4 * kv); incoming = FloatBuffer(count: 4 * kv)
        partialO = FloatBuffer(count: qo); partialL = FloatBuffer(count: batch * heads * length)
        dqPart = FloatBuffer(count: qo); dkPart = FloatBuffer(count: kv); dvPart = FloatBuffer(count: kv)
        rowDot = FloatBuffer(count: batch * heads * length)
    }

    var kvCount: Int { batch * length * kvHeads * headDim }
    var queryCount: Int { batch * length * heads * headDim }
    var rank: Int { comm.rank }
    var size: Int { comm.size }

    /// o and the global logsumexp L (B, Hq, T) of this rank's queries against every key.
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        o: UnsafeMutablePointer<Float>, logsumexp: UnsafeMutablePointer<Float>, threads: KernelThreads) {
        let n = kvCount
        kernels[rank].forward(q: q, k: k, v: v, o: o, logsumexp: logsumexp, threads: threads)
        guard size > 1 else { return }
        block.pointer.update(from: k, count: n)
        (block.pointer + n).update(from: v, count: n)
        for step in 1..<size {
            pass(floats: 2 * n, tag: 0x5200 + step)
            let source = (rank - step + size) % size
            kernels[source].forward(q: q, k: block.pointer, v: block.pointer + n, o: partialO.pointer, logsumexp: partialL.pointer,
                                    threads: threads)
            AttentionMerge.merge(o: o, logsumexp: logsumexp, with: partialO.pointer, otherLogsumexp: partialL.pointer,
                                 batch: batch, length: length, heads: heads, headDim: headDim, threads: threads)
        }
    }

    /// dq (B, T, Hq, D), dk, dv (B, T, Hkv, D), overwritten, from dO and `forward`'s o and L.
    public func backward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                         o: UnsafePointer<Float>, logsumexp: UnsafePointer<Float>, dO: UnsafePointer<Float>,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         threads: KernelThreads) {
        let n = kvCount
        FlashAttention.rowDot(o: o, dO: dO, into: rowDot.pointer, batch: batch, length: length, heads: heads, headDim: headDim,
                              threads: threads)
        let b = block.pointer
        b.update(from: k, count: n)
        (b + n).update(from: v, count: n)
        (b + 2 * n).update(repeating: 0, count: 2 * n)
        dq.update(repeating: 0, count: queryCount)
        for step in 0..<size {
            let source = (rank - step + size) % size
            kernels[source].backward(q: q, k: b, v: b + n, logsumexp: logsumexp, rowDot: rowDot.pointer, dO: dO,
                                     dq: dqPart.pointer, dk: dkPart.pointer, dv: dvPart.pointer, threads: threads)
            add(dqPart.pointer, into: dq, count: queryCount)
            add(dkPart.pointer, into: b + 2 * n, count: n)
            add(dvPart.pointer, into: b + 3 * n, count: n)
            guard size > 1 else { break }
            // The last transfer brings each block's gradients home; its K/V need not travel.
            if step == size - 1 {
                pass(floats: 2 * n, offset: 2 * n, tag: 0x5300 + step)
            } else {
                pass(floats: 4 * n, tag: 0x5300 + step)
            }
        }
        dk.update(from: b + 2 * n, count: n)
        dv.update(from: b + 3 * n, count: n)
    }

    private func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += x[i] }
    }

    /// Sends `block[offset..<offset+floats]` to the next rank and replaces it with the previous rank's.
    private func pass(floats: Int, offset: Int = 0, tag: Int) {
        let next = (rank + 1) % size, previous = (rank - 1 + size) % size
        let out = UnsafeRawBufferPointer(start: block.pointer + offset, count: floats * 4)
        let into = UnsafeMutableRawBufferPointer(start: incoming.pointer + offset, count: floats * 4)
        sequenceCollective("ring transfer") {
            if rank % 2 == 0 {
                try comm.send(out, to: next, tag: tag)
                try comm.receive(into, from: previous, tag: tag)
            } else {
                try comm.receive(into, from: previous, tag: tag)
                try comm.send(out, to: next, tag: tag)
            }
        }
        (block.pointer + offset).update(from: incoming.pointer + offset, count: floats)
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
