import Collectives
import Foundation
import Kernels
import TensorCore

/// A sequence sharded over the sequence ranks as pieces of equal length, and the small
/// exchanges a recurrent mixer (Mamba-2: causal convolution, then the SSD scan) needs to run on
/// its own pieces only, exactly:
///
/// - **Pieces**: every rank's positions are cut into runs of `length` consecutive positions
///   starting at multiples of `length` (the greatest such length; zigzag sharding gives the
///   2·P chunks). A rank's B·T rows are then `batch · count` samples of `length` rows, sample
///   b·count + i being piece `mine[i]` of sequence b — the layout the kernels take.
/// - **Convolution halo** (`halo`, `returnHaloGradient`): the W − 1 inputs before each piece
///   come from the pieces before it (zeros before the sequence); their gradient goes back.
/// - **Scan state** (`incomingStates`, `outgoingGradients`): each piece's (total decay, final
///   state from zero) pair is all-gathered and combined in sequence order into the state
///   entering each of this rank's pieces; backward, the gradients of the entering states are
///   combined in reverse order into ∂L/∂(state leaving) of each piece. Every rank combines in
///   the same order with the same arithmetic.
final class SequencePieces {
    let batch: Int
    let comm: Communicator
    /// This rank's positions (what the pieces were cut from).
    let positions: [Int]
    /// Tokens per piece, and pieces per rank.
    let length: Int, count: Int
    /// Piece k of every sequence (positions k·length ..< (k + 1)·length) is held by rank
    /// `owners[k].rank` as its piece `owners[k].index`.
    let owners: [(rank: Int, index: Int)]
    /// Global index of each of this rank's pieces, in the order it holds them.
    var mine: [Int] { (0..<count).map { start(rank: comm.rank, index: $0) / length } }
    private var starts: [[Int]]
    private var send = FloatBuffer(count: 0), receive = FloatBuffer(count: 0)
    /// Every piece's total log decay (P, batch · count, H), kept from the forward for the backward.
    private var decays = FloatBuffer(count: 0)

    /// Collective over `comm` (the positions are exchanged once).
    init(batch: Int, positions: [Int], comm: Communicator) throws {
        self.batch = batch; self.comm = comm; self.positions = positions
        let all = try comm.allGatherInts(positions.map(Int32.init), size: comm.size)
        var unit = 0
        for held in all {
            var runStart = 0
            for i in 1...held.count where i == held.count || held[i] != held[i - 1] + 1 {
                unit = Self.gcd(Self.gcd(unit, held[runStart]), i - runStart)
                runStart = i
            }
        }
        let total = all.reduce(0) { $0 + $1.count }
        precondition(unit > 0 && total % unit == 0, "SequencePieces: positions \(all) do not cut into equal pieces")
        length = unit; count = positions.count / unit
        starts = all.map { held in stride(from: 0, to: held.count, by: unit).map { held[$0] } }
        var owners = [(rank: Int, index: Int)?](repeating: nil, count: total / unit)
        for (rank, pieceStarts) in starts.enumerated() {
            for (index, s) in pieceStarts.enumerated() {
                precondition(owners[s / unit] == nil && all[rank].count == count * unit, "SequencePieces: positions \(all) overlap")
                owners[s / unit] = (rank, index)
            }
        }
        self.owners = owners.map { $0! }
    }

    private static func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
    private func start(rank: Int, index: Int) -> Int { starts[rank][index] }
    /// Samples of the kernels' layout: batch · count.
    var samples: Int { batch * count }

    /// Every rank's `floats` floats from `body`'s fill of the send buffer, rank r's at `r · floats`.
    private func allGather(_ floats: Int, _ fill: (UnsafeMutablePointer<Float>) -> Void) throws -> UnsafePointer<Float> {
        if send.count < floats { send = FloatBuffer(count: floats) }
        if receive.count < floats * comm.size { receive = FloatBuffer(count: floats * comm.size) }
        fill(send.pointer)
        try comm.allGather(UnsafeRawBufferPointer(start: send.pointer, count: floats * 4), counts: Array(repeating: floats * 4, count: comm.size),
                           into: UnsafeMutableRawBufferPointer(start: receive.pointer, count: floats * comm.size * 4))
        return UnsafePointer(receive.pointer)
    }

    /// halo (samples, W − 1, C) = the `width` − 1 rows of `input` (B·T rows, C channels) before each
    /// of this rank's pieces, from whichever pieces hold them; zeros before the sequence starts.
    func halo(_ input: StridedRows, channels: Int, width: Int, into halo: UnsafeMutablePointer<Float>) throws {
        let kept = width - 1, tail = min(kept, length)
        guard kept > 0 else { return }
        let block = samples * tail * channels
        let tails = try allGather(block) { send in
            for sample in 0..<samples {
                for j in 0..<tail {
                    (send + (sample * tail + j) * channels).update(from: input.row(sample * length + length - tail + j), count: channels)
                }
            }
        }
        for b in 0..<batch {
            for i in 0..<count {
                for j in 0..<kept {
                    let q = start(rank: comm.rank, index: i) - kept + j, to = halo + ((b * count + i) * kept + j) * channels
                    guard q >= 0 else { to.update(repeating: 0, count: channels); continue }
                    let owner = owners[q / length], row = q % length - (length - tail)
                    to.update(from: tails + owner.rank * block + ((b * count + owner.index) * tail + row) * channels, count: channels)
                }
            }
        }
    }

    /// Adds to `dInput` (B·T rows) the gradients every rank's `dHalo` (samples, W − 1, C) holds
    /// for this rank's rows, in rank order.
    func returnHaloGradient(_ dHalo: UnsafePointer<Float>, channels: Int, width: Int, addingTo dInput: MutableStridedRows) throws {
        let kept = width - 1
        guard kept > 0 else { return }
        let block = samples * kept * channels
        let all = try allGather(block) { $0.update(from: dHalo, count: block) }
        for rank in 0..<comm.size {
            for b in 0..<batch {
                for i in 0..<count {
                    for j in 0..<kept {
                        let q = start(rank: rank, index: i) - kept + j
                        guard q >= 0, owners[q / length].rank == comm.rank else { continue }
                        let to = dInput.row((b * count + owners[q / length].index) * length + q % length)
                        let from = all + rank * block + ((b * count + i) * kept + j) * channels
                        for c in 0..<channels { to[c] += from[c] }
                    }
                }
            }
        }
    }

    /// incoming (samples, H, S) = the state entering each of this rank's pieces, from every
    /// piece's `finals` (samples, H, S: its final state scanned from zero) and `logDecays`
    /// (samples, H: Σ log a over it): S_{k+1} = exp(decay_k) S_k + F_k, S_0 = 0.
    func incomingStates(finals: UnsafePointer<Float>, logDecays: UnsafePointer<Float>, heads: Int, stateSize: Int,
                        into incoming: UnsafeMutablePointer<Float>) throws {
        let states = samples * heads * stateSize, block = states + samples * heads
        let all = try allGather(block) { send in
            send.update(from: finals, count: states)
            (send + states).update(from: logDecays, count: samples * heads)
        }
        if decays.count != comm.size * samples * heads { decays = FloatBuffer(count: comm.size * samples * heads) }
        for rank in 0..<comm.size {
            (decays.pointer + rank * samples * heads).update(from: all + rank * block + states, count: samples * heads)
        }
        let size = heads * stateSize
        var running = [Float](repeating: 0, count: size)
        for b in 0..<batch {
            for i in 0..<size { running[i] = 0 }
            for (k, owner) in owners.enumerated() {
                let sample = b * count + owner.index
                if owner.rank == comm.rank { (incoming + sample * size).update(from: running, count: size) }
                guard k < owners.count - 1 else { break }
                let final = all + owner.rank * block + sample * size, decay = decays.pointer + (owner.rank * samples + sample) * heads
                for h in 0..<heads {
                    let carry = exp(decay[h])
                    for i in (h * stateSize)..<((h + 1) * stateSize) { running[i] = carry * running[i] + final[i] }
                }
            }
        }
    }

    /// dFinals (samples, H, S) = ∂L/∂(the state leaving each of this rank's pieces), from every
    /// piece's `dIncoming` (∂L/∂(its entering state) through its own outputs) and the decays of
    /// `incomingStates`: D_k = G_{k+1} + exp(decay_{k+1}) D_{k+1}, 0 after the last piece.
    func outgoingGradients(dIncoming: UnsafePointer<Float>, heads: Int, stateSize: Int, into dFinals: UnsafeMutablePointer<Float>) throws {
        let size = heads * stateSize, block = samples * size
        precondition(decays.count == comm.size * samples * heads, "SequencePieces.outgoingGradients before incomingStates")
        let all = try allGather(block) { $0.update(from: dIncoming, count: block) }
        var running = [Float](repeating: 0, count: size)
        for b in 0..<batch {
            for i in 0..<size { running[i] = 0 }
            for owner in owners.reversed() {
                let sample = b * count + owner.index
                if owner.rank == comm.rank { (dFinals + sample * size).update(from: running, count: size) }
                let gradient = all + owner.rank * block + sample * size, decay = decays.pointer + (owner.rank * samples + sample) * heads
                for h in 0..<heads {
                    let carry = exp(decay[h])
                    for i in (h * stateSize)..<((h + 1) * stateSize) { running[i] = gradient[i] + carry * running[i] }
                }
            }
        }
    }
}
