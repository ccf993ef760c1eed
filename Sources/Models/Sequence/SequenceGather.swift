import Collectives
import TensorCore

/// Whole sequences from sequence shards and back, for a mixer that runs over the whole
/// sequence on every sequence rank (the Mamba-2 mixer under `parallel.sequence`).
///
/// Forward: every rank's rows (B·T, w) are gathered into the whole sequences (B, P·T, w), each
/// row at its global position, the mixer runs on them, and each rank keeps its own rows.
/// Backward: each rank runs the mixer's backward pass over the whole sequences with ∂L/∂out
/// zero outside its own rows, which gives exactly its own rows' share of the parameter
/// gradients (summed over the sequence axis by the gradient reducer) and their ∂L/∂x at every
/// position; a reduce-scatter sums those over the ranks into each rank's rows.
/// Exact (one rank's arithmetic up to the order of the sums) at the cost of P times the
/// mixer's work and whole-sequence activations on every rank.
final class SequenceGather {
    let batch: Int, length: Int
    let comm: Communicator
    /// Every sequence rank's global positions, by rank.
    let positions: [[Int]]
    private var send = FloatBuffer(count: 0), receive = FloatBuffer(count: 0)

    /// Collective over `comm` (the positions are exchanged once).
    init(batch: Int, length: Int, positions mine: [Int], comm: Communicator) throws {
        self.batch = batch; self.length = length; self.comm = comm
        positions = try comm.allGatherInts(mine.map(Int32.init), size: comm.size)
    }

    var mine: [Int] { positions[comm.rank] }
    /// Tokens of each whole sequence.
    var total: Int { length * comm.size }

    private func buffers(_ count: Int) {
        if send.count < count { send = FloatBuffer(count: count); receive = FloatBuffer(count: count) }
    }

    /// whole (B, P·T, w) = every rank's `x` (B·T, w), rows at their positions.
    func gather(_ x: UnsafePointer<Float>, width: Int, into whole: UnsafeMutablePointer<Float>) throws {
        let p = comm.size, block = batch * length * width
        buffers(block * p)
        try comm.allGather(UnsafeRawBufferPointer(start: x, count: block * 4), counts: Array(repeating: block * 4, count: p),
                           into: UnsafeMutableRawBufferPointer(start: receive.pointer, count: block * 4 * p))
        for i in 0..<p {
            for b in 0..<batch {
                for t in 0..<length {
                    (whole + (b * total + positions[i][t]) * width).update(from: receive.pointer + i * block + (b * length + t) * width, count: width)
                }
            }
        }
    }

    /// out (B·T, w) += whole's rows at this rank's positions.
    func addOwnRows(_ whole: UnsafePointer<Float>, width: Int, to out: UnsafeMutablePointer<Float>) {
        for b in 0..<batch {
            for t in 0..<length {
                let from = whole + (b * total + mine[t]) * width, to = out + (b * length + t) * width
                for i in 0..<width { to[i] += from[i] }
            }
        }
    }

    /// whole (B, P·T, w) = `x` (B·T, w) at this rank's positions, zero elsewhere.
    func placeOwnRows(_ x: UnsafePointer<Float>, width: Int, into whole: UnsafeMutablePointer<Float>) {
        whole.update(repeating: 0, count: batch * total * width)
        for b in 0..<batch {
            for t in 0..<length {
                (whole + (b * total + mine[t]) * width).update(from: x + (b * length + t) * width, count: width)
            }
        }
    }

    /// x (B·T, w) = Σ over the ranks of their `whole` (B, P·T, w) rows at this rank's positions.
    func reduceScatter(_ whole: UnsafePointer<Float>, width: Int, into x: UnsafeMutablePointer<Float>) throws {
        let p = comm.size, block = batch * length * width
        buffers(block * p)
        for j in 0..<p {
            for b in 0..<batch {
                for t in 0..<length {
                    (send.pointer + j * block + (b * length + t) * width).update(from: whole + (b * total + positions[j][t]) * width, count: width)
                }
            }
        }
        try comm.reduceScatter(UnsafeBufferPointer(start: send.pointer, count: block * p),
                               into: UnsafeMutableBufferPointer(start: x, count: block), op: .sum)
    }
}
