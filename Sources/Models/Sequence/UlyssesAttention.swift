import Collectives
import Kernels
import TensorCore

/// DeepSpeed-Ulysses attention over the sequence ranks of one group: an all-to-all turns
/// sequence shards (every head, this rank's T/P positions) into head shards (Hq/P query heads
/// and Hkv/P kv heads, all T positions in natural order), the flash kernel attends over the whole
/// sequence, and an all-to-all turns the output back. Backward is the reverse: dO to head
/// shards, the flash backward pass, dQ/dK/dV back to sequence shards.
///
/// Rank j's head shard is query heads j·Hq/P ..< (j+1)·Hq/P and kv heads j·Hkv/P ..< (j+1)·Hkv/P,
/// so query head h still reads kv head h / (Hq/Hkv).
public final class UlyssesAttention {
    public let batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int
    public let comm: Communicator
    public let positions: [[Int]]
    public let kernel: FlashAttention
    /// Head-sharded, full-sequence q, k, v, o (B, P·T, H/P, D) and L (B, Hq/P, P·T), kept for backward.
    public let fullQ: FloatBuffer, fullK: FloatBuffer, fullV: FloatBuffer, fullO: FloatBuffer, logsumexp: FloatBuffer
    private let fullGradient: FloatBuffer, fullDK: FloatBuffer, fullDV: FloatBuffer, sendBuffer: FloatBuffer, receiveBuffer: FloatBuffer

    /// Why `heads`/`kvHeads` cannot be split over `ranks`, or nil.
    public static func problem(heads: Int, kvHeads: Int, ranks: Int) -> String? {
        guard ranks > 1, heads % ranks != 0 || kvHeads % ranks != 0 else { return nil }
        return "parallel.sequence_mode = ulysses splits heads over parallel.sequence = \(ranks) ranks, but model.heads = \(heads) "
            + "and model.kv_heads = \(kvHeads) are not both multiples of \(ranks); choose heads that are, or parallel.sequence_mode=ring"
    }

    /// Collective over `comm` (the positions are exchanged once).
    public init(batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int, positions mine: [Int], comm: Communicator) throws {
        let p = comm.size
        precondition(Self.problem(heads: heads, kvHeads: kvHeads, ranks: p) == nil, Self.problem(heads: heads, kvHeads: kvHeads, ranks: p)!)
        self.batch = batch; self.length = length; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        self.comm = comm
        positions = try comm.allGatherInts(mine.map(Int32.init), size: p)
        let total = length * p
        kernel = FlashAttention(batch: batch, queryLength: total, keyLength: total, heads: heads / p, kvHeads: kvHeads / p,
                                headDim: headDim, causal: true, queryPositions: Array(0..<total), keyPositions: Array(0..<total))
        let qo = batch * length * heads * headDim, kv = batch * length * kvHeads * headDim
        fullQ = FloatBuffer(count: qo); fullK = FloatBuffer(count: kv); fullV = FloatBuffer(count: kv); fullO = FloatBuffer(count: qo)
        fullGradient = FloatBuffer(count: qo); fullDK = FloatBuffer(count: kv); fullDV = FloatBuffer(count: kv)
        logsumexp = FloatBuffer(count: batch * heads * length)
        sendBuffer = FloatBuffer(count: qo); receiveBuffer = FloatBuffer(count: qo)
    }

    var size: Int { comm.size }

    /// o (B, T, Hq, D) of this rank's positions, every head.
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, o: UnsafeMutablePointer<Float>,
                        threads: KernelThreads, precision: ComputePrecision = .fp32) throws {
        try toHeads(q, heads: heads, into: fullQ.pointer)
        try toHeads(k, heads: kvHeads, into: fullK.pointer)
        try toHeads(v, heads: kvHeads, into: fullV.pointer)
        kernel.forward(q: fullQ.pointer, k: fullK.pointer, v: fullV.pointer, o: fullO.pointer, logsumexp: logsumexp.pointer,
                       threads: threads, precision: precision)
        try toSequence(fullO.pointer, heads: heads, into: o)
    }

    /// dq (B, T, Hq, D), dk, dv (B, T, Hkv, D), overwritten, from dO (B, T, Hq, D) after `forward`.
    public func backward(dO: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                         dv: UnsafeMutablePointer<Float>, threads: KernelThreads, precision: ComputePrecision = .fp32) throws {
        let fullDO = fullGradient.pointer
        try toHeads(dO, heads: heads, into: fullDO)
        let fullDQ = fullDQBuffer
        kernel.backward(q: fullQ.pointer, k: fullK.pointer, v: fullV.pointer, o: fullO.pointer, logsumexp: logsumexp.pointer,
                        dO: fullDO, dq: fullDQ.pointer, dk: fullDK.pointer, dv: fullDV.pointer, threads: threads,
                        precision: precision)
        try toSequence(fullDQ.pointer, heads: heads, into: dq)
        try toSequence(fullDK.pointer, heads: kvHeads, into: dk)
        try toSequence(fullDV.pointer, heads: kvHeads, into: dv)
    }

    private lazy var fullDQBuffer = FloatBuffer(count: batch * length * heads * headDim)

    /// x (B, T, H, D) of this rank's positions → (B, P·T, H/P, D) of this rank's heads, positions in order.
    func toHeads(_ x: UnsafePointer<Float>, heads h: Int, into full: UnsafeMutablePointer<Float>) throws {
        let p = size, hp = h / p, row = hp * headDim, block = batch * length * row
        for j in 0..<p {
            for b in 0..<batch {
                for t in 0..<length {
                    (sendBuffer.pointer + j * block + (b * length + t) * row).update(from: x + ((b * length + t) * h + j * hp) * headDim, count: row)
                }
            }
        }
        try exchange(floats: block)
        let total = length * p
        for i in 0..<p {
            for b in 0..<batch {
                for t in 0..<length {
                    (full + (b * total + positions[i][t]) * row).update(from: receiveBuffer.pointer + i * block + (b * length + t) * row, count: row)
                }
            }
        }
    }

    /// The inverse of `toHeads`: (B, P·T, H/P, D) of this rank's heads → (B, T, H, D) of its positions.
    func toSequence(_ full: UnsafePointer<Float>, heads h: Int, into x: UnsafeMutablePointer<Float>) throws {
        let p = size, hp = h / p, row = hp * headDim, block = batch * length * row, total = length * p
        for i in 0..<p {
            for b in 0..<batch {
                for t in 0..<length {
                    (sendBuffer.pointer + i * block + (b * length + t) * row).update(from: full + (b * total + positions[i][t]) * row, count: row)
                }
            }
        }
        try exchange(floats: block)
        for j in 0..<p {
            for b in 0..<batch {
                for t in 0..<length {
                    (x + ((b * length + t) * h + j * hp) * headDim).update(from: receiveBuffer.pointer + j * block + (b * length + t) * row, count: row)
                }
            }
        }
    }

    /// All-to-all of `floats` per rank from `sendBuffer` into `receiveBuffer`.
    private func exchange(floats: Int) throws {
        let counts = Array(repeating: floats * 4, count: size)
        try comm.allToAll(UnsafeRawBufferPointer(start: sendBuffer.pointer, count: floats * 4 * size), sendCounts: counts,
                          into: UnsafeMutableRawBufferPointer(start: receiveBuffer.pointer, count: floats * 4 * size), receiveCounts: counts)
    }
}
