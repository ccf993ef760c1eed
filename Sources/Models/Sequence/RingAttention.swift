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
    /// The next K/V block is in flight (on a transfer thread) while the current one is computed;
    /// each block after the first is merged into (o, L) inside the flash kernel's online softmax
    /// (`accumulate`), so no partial output is stored.
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        o: UnsafeMutablePointer<Float>, logsumexp: UnsafeMutablePointer<Float>, threads: KernelThreads) throws {
        var blocks = TravellingBlocks(k: k, v: v, count: kvCount, ringSize: size)
        for step in 0..<size {
            let (kNow, vNow) = blocks.current
            let transfer = step < size - 1
                ? startTransfer(sending: [(kNow, kvCount), (vNow, kvCount)], receiving: blocks.receiving, tag: 0x5200 + step) : nil
            let source = (rank - step + size) % size
            kernels[source].forward(q: q, k: kNow, v: vNow, o: o, logsumexp: logsumexp, accumulate: step > 0, threads: threads)
            if let transfer {
                try transfer.wait()
                blocks.advance()
            }
        }
    }

    /// dq (B, T, Hq, D), dk, dv (B, T, Hkv, D), overwritten, from dO and `forward`'s o and L.
    /// The next K/V block travels while the current one is computed; dk and dv hold the
    /// gradients accumulated for the block this rank holds, and after each step they are
    /// exchanged in place around the ring (in slices, through a small buffer), so the gradients
    /// follow their block and the last exchange brings this rank's own home.
    public func backward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                         o: UnsafePointer<Float>, logsumexp: UnsafePointer<Float>, dO: UnsafePointer<Float>,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         threads: KernelThreads) throws {
        let n = kvCount
        let rowDot = FloatBuffer(count: batch * heads * length)
        FlashAttention.rowDot(o: o, dO: dO, into: rowDot.pointer, batch: batch, length: length, heads: heads, headDim: headDim,
                              threads: threads)
        dq.update(repeating: 0, count: queryCount)
        dk.update(repeating: 0, count: n)
        dv.update(repeating: 0, count: n)
        var blocks = TravellingBlocks(k: k, v: v, count: n, ringSize: size)
        for step in 0..<size {
            let (kNow, vNow) = blocks.current
            let transfer = step < size - 1
                ? startTransfer(sending: [(kNow, n), (vNow, n)], receiving: blocks.receiving, tag: 0x5300 + 2 * step) : nil
            let source = (rank - step + size) % size
            kernels[source].backward(q: q, k: kNow, v: vNow, logsumexp: logsumexp, rowDot: rowDot.pointer, dO: dO,
                                     dq: dq, dk: dk, dv: dv, accumulate: true, threads: threads)
            guard size > 1 else { break }
            if let transfer {
                try transfer.wait()
                blocks.advance()
            }
            // This block's gradients follow it (the last exchange brings every block's home).
            try startExchange(inPlace: [(dk, n), (dv, n)], tag: 0x5300 + 2 * step + 1).wait()
        }
    }

    /// One ring transfer on its own thread: the `sending` ranges, in order, to the next rank; the
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
        let slice = Self.exchangeSlice
        return onTransferThread { comm, next, previous, sendsFirst in
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: slice, alignment: 64)
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

    /// Bytes per slice of an in-place exchange: large enough to keep the link busy, small
    /// against a rank's gradients.
    static let exchangeSlice = 1 << 20

    /// Runs `body` (communicator, next rank, previous rank, whether this rank sends first) on
    /// a new thread; its error is rethrown by `wait`.
    private func onTransferThread(_ body: @escaping @Sendable (Communicator, Int, Int, Bool) throws -> Void) -> RingTransfer {
        let transfer = RingTransfer()
        let (comm, rank, size) = (UncheckedCommunicator(comm), self.rank, self.size)
        let thread = Thread {
            do {
                try body(comm.value, (rank + 1) % size, (rank - 1 + size) % size, rank % 2 == 0)
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

/// The K/V block a rank computes on at each ring step, and where the next one lands: the
/// rank's own k and v at step 0, then alternately two receive buffers of [K | V] (one when the
/// ring has two ranks, none for one), which live for one call only, so layers share no
/// persistent ring memory.
private struct TravellingBlocks {
    private let count: Int
    private var buffers: [FloatBuffer]
    private var step = 0
    private(set) var current: (UnsafePointer<Float>, UnsafePointer<Float>)

    init(k: UnsafePointer<Float>, v: UnsafePointer<Float>, count: Int, ringSize: Int) {
        self.count = count
        buffers = (0..<min(2, ringSize - 1)).map { _ in FloatBuffer(count: 2 * count) }
        current = (k, v)
    }

    /// Where the block for the next step is received: K then V.
    var receiving: [(UnsafeMutablePointer<Float>, Int)] {
        let into = buffers[step % buffers.count].pointer
        return [(into, count), (into + count, count)]
    }

    /// The received block becomes the current one.
    mutating func advance() {
        let into = buffers[step % buffers.count].pointer
        current = (UnsafePointer(into), UnsafePointer(into + count))
        step += 1
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
