import Collectives
import Foundation
import Kernels
import TensorCore

/// Ring attention over the sequence ranks of one group: each rank holds the queries, keys and
/// values of its own positions; keys and values travel around the ring in small units (rank r
/// sends to r + 1 and receives from r − 1), and each rank computes its queries against every
/// unit it sees, masked by global positions, merging into (O, L) inside the flash kernel's
/// online softmax (`accumulate`), so no partial output is stored.
///
/// Units: for each batch element, a rank's T keys are cut into units of two key ranges, one
/// from the front and its mirror from the back: unit u holds keys [uK, (u+1)K) and
/// [T − (u+1)K, T − uK), K = `rangeKeys`, each clipped at the middle (the last unit's ranges
/// are shorter, and its back range may be empty). Each unit makes a whole trip around the ring
/// before the next one starts (unit-outer, step-inner): at step s a rank computes its queries
/// against unit u of rank r − s while that unit goes on to r + 1 and unit u of rank r − s − 1
/// arrives. Why mirrored pairs: every rank's transfers wait for its neighbours once per unit
/// and step, so each step's work should be equal on every rank; with zigzag shards (an early
/// and a late chunk per rank, `SequenceSharding`) a front range and its mirrored back range
/// carry the same causal work on every rank at every step, where with one contiguous range a
/// rank would have, at some steps, half of its queries' work more than its neighbour (fwd+bwd
/// at N = 8192 over 2 ranks: 1,906 ms with contiguous ranges of 512 keys against 1,606 ms
/// mirrored).
///
/// Memory: a call holds only the unit it computes on and the one arriving, in at most two
/// receive buffers of one unit's K and V (one with two ranks, whose first unit is read from the
/// rank's own inputs; none with one rank): 2 × 2 × `rangeKeys` × Hkv × D floats each, at most
/// 2 MiB with the default `rangeKeys` when Hkv × D ≤ 512 (K of a unit ≤ `unitKeyBytes`; past
/// that a range is one key tile, and K of a unit two tiles), whatever the sequence length. Besides: the MPI backend's copies of the sends in
/// flight (one unit), the backward pass's rowsum D (B, Hq, T), one slice of exchange scratch and
/// the flash workspaces (at N = 8192 over 2 ranks, H = Hkv = 8, D = 64: 5.6–7.2 MiB in all, the
/// same at N = 16384, where one whole travelling K/V block was 16 MiB and growing with N).
///
/// Backward: D = rowsum(dO ⊙ O) of the final output, then every unit travels again; the rows of
/// dk and dv of this rank's own unit hold the dK/dV accumulated for the unit it computes on and
/// are exchanged in place around the ring after each step (in slices, through a small buffer),
/// so the gradients follow their unit and after P exchanges each rank's are home. Each step is
/// one unit's share computed with the global L and D.
///
/// Transfers alternate send/receive order by rank parity (even ranks send first, odd ranks
/// receive first), so no rank waits on a peer that is itself waiting to send: deadlock-free on
/// every backend, including ones whose send waits for the receiver. Each K/V transfer runs on the
/// ring's transfer thread while the current unit is computed (the communicator is used by that thread
/// alone until it is waited for); in the backward pass a unit's dK/dV follow it after its step.
///
/// Layouts as `FlashAttention`: q, o (B, T, Hq, D), k, v (B, T, Hkv, D) with T this rank's tokens.
public final class RingAttention {
    public let batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int
    public let comm: Communicator
    /// Positions of every rank of the group, by rank.
    public let positions: [[Int]]
    /// Keys of each of a unit's two ranges (fewer in the last unit).
    public let rangeKeys: Int
    /// The units' key ranges within a rank's T keys (the same on every rank): front and back,
    /// the back one possibly empty.
    let units: [Unit]
    /// This rank's queries against the front and back keys of unit u of rank s, by s and u.
    let kernels: [[(front: FlashAttention, back: FlashAttention?)]]
    /// Where the transfers run: one thread for the ring's life, started by the first transfer.
    private var transfers: TransferThread?

    /// Bytes of K a unit holds by default (its V as many again).
    public static let unitKeyBytes = 1 << 20

    /// Keys per range by default: the whole key tiles of the flash kernel that let a unit's two
    /// ranges of K fit `unitKeyBytes`, at least one tile.
    public static func defaultRangeKeys(kvHeads: Int, headDim: Int, keyTile: Int = FlashAttention.defaultKeyTile) -> Int {
        let tileBytes = keyTile * kvHeads * headDim * MemoryLayout<Float>.size
        return max(1, unitKeyBytes / (2 * tileBytes)) * keyTile
    }

    /// Collective over `comm`: every rank of the group passes its own positions, which are
    /// exchanged once. `rangeKeys` (default `defaultRangeKeys`) must be the same on every rank.
    public init(batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int, positions mine: [Int], comm: Communicator,
                rangeKeys: Int? = nil) throws {
        let keys = rangeKeys ?? Self.defaultRangeKeys(kvHeads: kvHeads, headDim: headDim)
        precondition(keys > 0, "RingAttention: a unit's ranges need at least one key, got \(keys)")
        self.batch = batch; self.length = length; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        self.comm = comm
        self.rangeKeys = keys
        let all = try comm.allGatherInts(mine.map(Int32.init), size: comm.size)
        positions = all
        let units = Self.units(length: length, rangeKeys: keys)
        self.units = units
        // Every kernel shares this one's queries (their positions and tile bounds are stored
        // once, not once per source and unit).
        let queries = FlashAttention(batch: 1, queryLength: length, keyLength: 0, heads: heads, kvHeads: kvHeads, headDim: headDim,
                                     causal: true, queryPositions: mine, keyPositions: [])
        func kernel(_ keyPositions: ArraySlice<Int>) -> FlashAttention { queries.withKeys(Array(keyPositions)) }
        kernels = all.map { source in
            units.map { unit in (front: kernel(source[unit.front]), back: unit.back.isEmpty ? nil : kernel(source[unit.back])) }
        }
    }

    deinit { transfers?.stop() }

    /// One unit: a range of keys from the front of a rank's and its mirror from the back.
    struct Unit {
        let front: Range<Int>, back: Range<Int>
    }

    /// Unit u: keys [uK, (u+1)K) of the front half (the first ⌈T/2⌉ keys) and
    /// [T − (u+1)K, T − uK) of the back half, each clipped to its half.
    static func units(length: Int, rangeKeys: Int) -> [Unit] {
        let middle = (length + 1) / 2
        return stride(from: 0, to: middle, by: rangeKeys).map { start in
            Unit(front: start..<min(start + rangeKeys, middle),
                 back: max(length - start - rangeKeys, middle)..<max(length - start, middle))
        }
    }

    /// This rank's own positions (its queries').
    public var queryPositions: [Int] { positions[rank] }
    var rank: Int { comm.rank }
    var size: Int { comm.size }
    /// Floats of one row of K or V, of one batch element's q or k, and of its L.
    var kvRow: Int { kvHeads * headDim }
    var queryFloats: Int { length * heads * headDim }
    var keyFloats: Int { length * kvRow }
    var statisticFloats: Int { heads * length }

    /// Where unit u of batch element b lies in this rank's k and v (or dk and dv).
    func own<P>(_ k: P, _ v: P, b: Int, _ unit: Unit, advanced: (P, Int) -> P) -> UnitRanges<P> {
        let base = b * keyFloats
        let front = base + unit.front.lowerBound * kvRow, back = base + unit.back.lowerBound * kvRow
        return UnitRanges(kFront: advanced(k, front), kBack: advanced(k, back), vFront: advanced(v, front), vBack: advanced(v, back),
                          frontCount: unit.front.count * kvRow, backCount: unit.back.count * kvRow)
    }

    /// o and the global logsumexp L (B, Hq, T) of this rank's queries against every key.
    /// The next unit of K/V is in flight (on a transfer thread) while the current one is
    /// computed; the first call of each batch element writes (o, L) and every later one merges
    /// into them.
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        o: UnsafeMutablePointer<Float>, logsumexp: UnsafeMutablePointer<Float>, threads: KernelThreads,
                        precision: ComputePrecision = .fp32) throws {
        var held = TravellingUnits(unit: units.first, kvRow: kvRow, ringSize: size)
        for b in 0..<batch {
            let (qb, ob, lb) = (q + b * queryFloats, o + b * queryFloats, logsumexp + b * statisticFloats)
            for (u, unit) in units.enumerated() {
                held.start(own(k, v, b: b, unit) { $0 + $1 })
                for step in 0..<size {
                    let now = held.current
                    let transfer = step < size - 1
                        ? startTransfer(sending: now.pieces, receiving: held.receiving.pieces,
                                        tag: MessageTag.ringForward.tag((b * units.count + u) * size + step)) : nil
                    let pair = kernels[(rank - step + size) % size][u]
                    pair.front.forward(q: qb, k: now.kFront, v: now.vFront, o: ob, logsumexp: lb, accumulate: u > 0 || step > 0,
                                       threads: threads, precision: precision)
                    pair.back?.forward(q: qb, k: now.kBack, v: now.vBack, o: ob, logsumexp: lb, accumulate: true, threads: threads,
                                       precision: precision)
                    if let transfer {
                        try transfer.wait()
                        held.advance()
                    }
                }
            }
        }
    }

    /// dq (B, T, Hq, D), dk, dv (B, T, Hkv, D), overwritten, from dO and `forward`'s o and L.
    /// The next unit of K/V travels while the current one is computed; the rows of dk and dv of
    /// this rank's own unit hold the gradients accumulated for the unit this rank holds, and
    /// after each step they are exchanged in place around the ring (in slices, through a small
    /// buffer), so the gradients follow their unit and the last exchange brings this rank's home.
    public func backward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                         o: UnsafePointer<Float>, logsumexp: UnsafePointer<Float>, dO: UnsafePointer<Float>,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         threads: KernelThreads, precision: ComputePrecision = .fp32) throws {
        let rowDot = FloatBuffer(count: batch * statisticFloats)
        FlashAttention.rowDot(o: o, dO: dO, into: rowDot.pointer, batch: batch, length: length, heads: heads, headDim: headDim,
                              threads: threads)
        dq.update(repeating: 0, count: batch * queryFloats)
        dk.update(repeating: 0, count: batch * keyFloats)
        dv.update(repeating: 0, count: batch * keyFloats)
        var held = TravellingUnits(unit: units.first, kvRow: kvRow, ringSize: size)
        for b in 0..<batch {
            let (qb, dOb, dqb) = (q + b * queryFloats, dO + b * queryFloats, dq + b * queryFloats)
            let (lb, db) = (logsumexp + b * statisticFloats, UnsafePointer(rowDot.pointer + b * statisticFloats))
            for (u, unit) in units.enumerated() {
                held.start(own(k, v, b: b, unit) { $0 + $1 })
                // The travelling dK/dV of the unit at hand, in this rank's own rows of the unit.
                let gradients = own(dk, dv, b: b, unit) { $0 + $1 }
                for step in 0..<size {
                    let now = held.current
                    let message = (b * units.count + u) * size + step
                    let transfer = step < size - 1
                        ? startTransfer(sending: now.pieces, receiving: held.receiving.pieces, tag: MessageTag.ringBackward.tag(message)) : nil
                    let pair = kernels[(rank - step + size) % size][u]
                    pair.front.backward(q: qb, k: now.kFront, v: now.vFront, logsumexp: lb, rowDot: db, dO: dOb,
                                        dq: dqb, dk: gradients.kFront, dv: gradients.vFront, accumulate: true, threads: threads, precision: precision)
                    pair.back?.backward(q: qb, k: now.kBack, v: now.vBack, logsumexp: lb, rowDot: db, dO: dOb,
                                        dq: dqb, dk: gradients.kBack, dv: gradients.vBack, accumulate: true, threads: threads, precision: precision)
                    guard size > 1 else { continue }
                    if let transfer {
                        try transfer.wait()
                        held.advance()
                    }
                    // This unit's gradients follow it (the last exchange brings every unit's home).
                    try startExchange(inPlace: gradients.pieces, tag: MessageTag.ringGradients.tag(message)).wait()
                }
            }
        }
    }

    /// One ring transfer on the transfer thread: the `sending` ranges, in order, to the next rank; the
    /// previous rank's into the `receiving` ranges. Even ranks send first and odd ranks receive
    /// first, so the ring cannot deadlock even where a send waits for its receiver. Only this
    /// thread uses the communicator until `wait` returns.
    private func startTransfer(sending: [(UnsafePointer<Float>, Int)], receiving: [(UnsafeMutablePointer<Float>, Int)],
                               tag: Int) -> RingTransfer {
        let bytes = TransferBytes(out: sending.map { UnsafeRawBufferPointer(start: $0.0, count: $0.1 * 4) },
                                  into: receiving.map { UnsafeMutableRawBufferPointer(start: $0.0, count: $0.1 * 4) })
        return onTransferThread { comm, next, previous, sendsFirst in
            for (out, into) in zip(bytes.out, bytes.into) {
                if sendsFirst {
                    try comm.send(out, to: next, tag: tag)
                    try comm.receive(into, from: previous, tag: tag)
                } else {
                    try comm.receive(into, from: previous, tag: tag)
                    try comm.send(out, to: next, tag: tag)
                }
            }
        }
    }

    /// Sends each range to the next rank and replaces it with the previous rank's, slice by
    /// slice through one slice of scratch (a slice is sent before it is overwritten), on a
    /// transfer thread.
    private func startExchange(inPlace ranges: [(UnsafeMutablePointer<Float>, Int)], tag: Int) -> RingTransfer {
        let bytes = TransferBytes(out: [], into: ranges.map { UnsafeMutableRawBufferPointer(start: $0.0, count: $0.1 * 4) })
        let slice = min(Self.exchangeSlice, bytes.into.map(\.count).max() ?? 0)
        return onTransferThread { comm, next, previous, sendsFirst in
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: max(slice, 1), alignment: 64)
            defer { scratch.deallocate() }
            for range in bytes.into {
                var offset = 0
                while offset < range.count {
                    let count = min(slice, range.count - offset)
                    let piece = UnsafeMutableRawBufferPointer(rebasing: range[offset..<(offset + count)])
                    let landing = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<count])
                    if sendsFirst {
                        try comm.send(UnsafeRawBufferPointer(piece), to: next, tag: tag)
                        try comm.receive(landing, from: previous, tag: tag)
                    } else {
                        try comm.receive(landing, from: previous, tag: tag)
                        try comm.send(UnsafeRawBufferPointer(piece), to: next, tag: tag)
                    }
                    piece.copyMemory(from: UnsafeRawBufferPointer(landing))
                    offset += count
                }
            }
        }
    }

    /// Bytes per slice of an in-place exchange, at most: large enough to keep the link busy,
    /// small against a rank's gradients.
    static let exchangeSlice = 1 << 20

    /// Runs `body` (communicator, next rank, previous rank, whether this rank sends first) on
    /// the ring's transfer thread; its error is rethrown by `wait`.
    private func onTransferThread(_ body: @escaping @Sendable (Communicator, Int, Int, Bool) throws -> Void) -> RingTransfer {
        let (comm, rank, size) = (UncheckedCommunicator(comm), self.rank, self.size)
        if transfers == nil { transfers = TransferThread(name: "ring attention transfers") }
        return transfers!.start { try body(comm.value, (rank + 1) % size, (rank - 1 + size) % size, rank % 2 == 0) }
    }
}

/// Where one unit's K and V lie: the front and back ranges of each (`frontCount` and
/// `backCount` floats; an empty back range is left out of `pieces`).
struct UnitRanges<P> {
    let kFront: P, kBack: P, vFront: P, vBack: P
    let frontCount: Int, backCount: Int

    /// The non-empty ranges, in the order they travel: K front, K back, V front, V back.
    var pieces: [(P, Int)] {
        [(kFront, frontCount), (kBack, backCount), (vFront, frontCount), (vBack, backCount)].filter { $0.1 > 0 }
    }
}

/// The unit a rank computes on at each ring step, and where the next one lands: the rank's own
/// unit at step 0, then alternately two receive buffers of [K front | K back | V front | V back]
/// sized for the largest unit (one when the ring has two ranks, none for one), which live for
/// one call only, so layers share no persistent ring memory.
private struct TravellingUnits {
    private var buffers: [FloatBuffer]
    private var next = 0
    private var held: UnitRanges<UnsafePointer<Float>>?

    /// `unit`: the largest (the first); nil when there are no keys.
    init(unit: RingAttention.Unit?, kvRow: Int, ringSize: Int) {
        let floats = 2 * ((unit?.front.count ?? 0) + (unit?.back.count ?? 0)) * kvRow
        buffers = (0..<min(2, ringSize - 1)).map { _ in FloatBuffer(count: floats) }
    }

    /// A new unit's trip begins at this rank's own copy of it.
    mutating func start(_ own: UnitRanges<UnsafePointer<Float>>) { held = own }

    /// The unit computed on now (`start` begins every trip).
    var current: UnitRanges<UnsafePointer<Float>> { held! }

    /// Where the current unit's successor on the ring is received (never the current unit).
    var receiving: UnitRanges<UnsafeMutablePointer<Float>> {
        let into = buffers[next].pointer, (front, back) = (current.frontCount, current.backCount)
        return UnitRanges(kFront: into, kBack: into + front, vFront: into + front + back, vBack: into + 2 * front + back,
                          frontCount: front, backCount: back)
    }

    /// The received unit becomes the current one.
    mutating func advance() {
        let into = receiving
        held = UnitRanges(kFront: UnsafePointer(into.kFront), kBack: UnsafePointer(into.kBack), vFront: UnsafePointer(into.vFront),
                             vBack: UnsafePointer(into.vBack), frontCount: into.frontCount, backCount: into.backCount)
        next = (next + 1) % buffers.count
    }
}

/// The byte ranges of one ring transfer, handed to its thread: the caller keeps the buffers
/// alive, and does not write them, until the transfer's `wait` returns.
private struct TransferBytes: @unchecked Sendable {
    let out: [UnsafeRawBufferPointer]
    let into: [UnsafeMutableRawBufferPointer]
}

/// The communicator, handed to a transfer thread that is its only user until `wait` returns.
private struct UncheckedCommunicator: @unchecked Sendable {
    let value: Communicator
    init(_ value: Communicator) { self.value = value }
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
