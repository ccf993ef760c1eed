import CDecode
import Dispatch
import Foundation

/// Decode attention ("lean attention"): one new query token per (batch, query head) against a
/// KV cache of `length` positions, with grouped-query heads (Hq a multiple of Hkv).
///
/// Work split (stream-K): the work is the list of (batch, kv head, KV block) items, in that
/// order; every worker takes an equal contiguous share of it, whatever the length, batch and
/// head count, so a share may start in the middle of one head's blocks and end in another's.
/// An item reads its block of K and V once for all the query heads of its group and writes one
/// partial (o, lse) per query head: o is that block's softmax-weighted mean of V, lse the log of
/// its softmax denominator (with the scores' scale). Partials then merge with the associative
/// rescaling of `merge`.
///
/// The reduction tree is fixed by block index, never by the split, so the result does not
/// depend on the number of workers, bit for bit: block i belongs to lane i mod `lanes` at round
/// i / `lanes`; each lane's blocks merge pairwise over rounds (`foldPairwise`), then the lanes
/// merge pairwise in lane order. A cache sharded over ranks by lane (rank r holding the lanes
/// l with l mod N = r, blocks in global order) gives each rank complete lane partials
/// (`lanePartials`); gathering them and folding the lanes gives every rank count the same bits.
///
/// A block's partial comes from a C kernel (CDecode) for the widest instruction set of the CPU
/// (`TesseraGemm.isa`: AVX-512, AVX2 + FMA or portable; `TESSERA_GEMM_ISA` overrides it). The same
/// kernel gives the same bits for a block wherever it runs; two instruction sets agree within
/// rounding (about 1e-6 relative), not bit for bit, so every rank of one job runs one of them.
///
/// Layouts: q and o (B, Hq, D); the caches k and v (B, Hkv, capacity, D), of which the first
/// `length` rows of each head are used; lse (B, Hq). Partial records are D + 1 floats: o, then
/// lse. An empty partial (no positions) has o = 0 and lse = −∞ and merges as the identity.
public struct LeanAttention: Sendable {
    public let batch: Int, heads: Int, kvHeads: Int, headDim: Int
    /// Positions per KV block: the leaves of the reduction tree and the work item's size.
    public let blockSize: Int
    /// Lanes of the reduction tree (the sharding unit of a cache split over ranks).
    public let lanes: Int

    public static let defaultBlockSize = 64
    public static let defaultLanes = 64
    /// The instruction set of the block kernel.
    public let isa: TesseraGemm.ISA

    public init(batch: Int, heads: Int, kvHeads: Int, headDim: Int,
                blockSize: Int = LeanAttention.defaultBlockSize, lanes: Int = LeanAttention.defaultLanes,
                isa: TesseraGemm.ISA = TesseraGemm.isa) {
        precondition(batch >= 1 && heads >= 1 && kvHeads >= 1 && headDim >= 1, "LeanAttention: sizes must be at least 1")
        precondition(heads % kvHeads == 0, "LeanAttention: \(heads) heads do not split into \(kvHeads) kv heads")
        precondition(blockSize >= 1 && lanes >= 1, "LeanAttention: blockSize and lanes must be at least 1")
        self.batch = batch; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        precondition(TesseraGemm.ISA.available(on: CPUInfo.current.features).contains(isa), "LeanAttention: no \(isa) kernel on this CPU")
        self.blockSize = blockSize; self.lanes = lanes; self.isa = isa
    }

    /// Floats per partial record: o (D), then lse.
    public var recordSize: Int { headDim + 1 }
    var group: Int { heads / kvHeads }
    var scale: Float { 1 / Float(headDim).squareRoot() }

    /// Blocks covering `length` positions.
    public func blockCount(length: Int) -> Int { (length + blockSize - 1) / blockSize }

    // MARK: One process

    /// o = softmax(q Kᵀ / √D) V over the first `length` cache rows; lse (optional) receives the
    /// log of each head's softmax denominator. `workers` overrides `threads.count` (tests).
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, length: Int, capacity: Int,
                        o: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>? = nil,
                        threads: KernelThreads = .single, workers: Int? = nil) {
        let records = UnsafeMutablePointer<Float>.allocate(capacity: batch * heads * lanes * recordSize)
        defer { records.deallocate() }
        lanePartials(q: q, k: k, v: v, length: length, capacity: capacity, ownedLanes: Array(0..<lanes), records: records,
                     threads: threads, workers: workers)
        let size = recordSize
        Self.forShares(batch * heads, workers: min(workers ?? threads.count, batch * heads)) { pairs in
            for pair in pairs {
                let lane0 = records + pair * lanes * size
                Self.foldPairwise(lane0, count: lanes, stride: size, headDim: headDim)
                (o + pair * headDim).update(from: lane0, count: headDim)
                lse?[pair] = lane0[headDim]
            }
        }
    }

    // MARK: A cache sharded by lane

    /// Lane partials of a cache that holds the blocks of `ownedLanes` (increasing lane indices):
    /// its block j is the global block of lane ownedLanes[j mod c] at round j / c, where c is
    /// `ownedLanes.count`, and only its last block may be partial. `records` receives
    /// (B, Hq, c) records; a lane without blocks gets the empty partial.
    public func lanePartials(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, length: Int, capacity: Int,
                             ownedLanes: [Int], records: UnsafeMutablePointer<Float>,
                             threads: KernelThreads = .single, workers: Int? = nil) {
        precondition(length >= 0 && length <= capacity, "LeanAttention: length \(length) exceeds the cache capacity \(capacity)")
        precondition(ownedLanes.allSatisfy { (0..<lanes).contains($0) }, "LeanAttention: lanes \(ownedLanes) outside 0..<\(lanes)")
        let c = ownedLanes.count, size = recordSize
        guard c > 0 else { return }
        let blocks = blockCount(length: length)
        let workerCount = max(1, workers ?? threads.count)
        // Per-block partials (B, Hq, blocks), computed in equal shares of (batch, kv head, block),
        // in this thread's buffer (kept between calls: fresh pages every step cost page faults).
        let perBlock = PackBuffers.current.partials.reserve(batch * heads * blocks * size)
        let items = batch * kvHeads * blocks
        let kernel = Self.blockKernel(isa), D = headDim, G = group, scoreStride = Self.scoreStride(blockSize)
        Self.forShares(items, workers: workerCount) { share in
            guard !share.isEmpty else { return }
            let scores = PackBuffers.current.scores.reserve(G * scoreStride)
            /// Rows and cache offset of an item (pair = b · Hkv + kvh).
            func locate(_ item: Int) -> (rows: Int, offset: Int) {
                let block = item % blocks, start = block * blockSize
                return (min(blockSize, length - start), ((item / blocks) * capacity + start) * D)
            }
            var (rows, offset) = locate(share.lowerBound)
            for item in share {
                let block = item % blocks, pair = item / blocks
                let b = pair / kvHeads, kvh = pair % kvHeads
                let firstHead = b * heads + kvh * group
                let next = item + 1 < share.upperBound ? locate(item + 1) : (rows: 0, offset: 0)
                kernel(D, G, rows, scale, q + firstHead * D, k + offset, v + offset,
                       perBlock + (firstHead * blocks + block) * size, blocks * size, scores, scoreStride,
                       next.rows > 0 ? k + next.offset : nil, next.rows > 0 ? v + next.offset : nil, next.rows)
                (rows, offset) = next
            }
        }
        // Each lane's blocks merge pairwise over rounds, in equal shares of (batch, head, lane).
        Self.forShares(batch * heads * c, workers: min(workerCount, batch * heads * c)) { share in
            for item in share {
                let index = item % c, pair = item / c
                let out = records + item * size
                guard index < blocks else { Self.setEmpty(out, headDim: headDim); continue }
                let first = perBlock + (pair * blocks + index) * size
                let rounds = (blocks - index + c - 1) / c
                Self.foldPairwise(first, count: rounds, stride: c * size, headDim: headDim)
                out.update(from: first, count: size)
            }
        }
    }

    // MARK: The merge algebra

    /// Writes the empty partial (o = 0, lse = −∞).
    @inline(__always)
    public static func setEmpty(_ record: UnsafeMutablePointer<Float>, headDim: Int) {
        record.update(repeating: 0, count: headDim)
        record[headDim] = -.infinity
    }

    /// a ← a ⊕ b: the partial of the union of two disjoint sets of positions. With
    /// m = max(lse_a, lse_b), w = exp(lse − m): o = (w_a o_a + w_b o_b) / (w_a + w_b),
    /// lse = m + log(w_a + w_b). Commutative bit for bit; an empty side leaves the other unchanged.
    @inline(__always)
    public static func merge(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, headDim: Int) {
        let la = a[headDim], lb = b[headDim]
        if lb == -.infinity { return }
        if la == -.infinity { a.update(from: b, count: headDim + 1); return }
        let m = max(la, lb)
        let wa = Foundation.exp(la - m), wb = Foundation.exp(lb - m)
        let total = wa + wb
        let ca = wa / total, cb = wb / total
        var d = 0
        while d + 8 <= headDim {
            VectorMath.store(VectorMath.load(a + d) * ca + VectorMath.load(b + d) * cb, a + d)
            d += 8
        }
        while d < headDim { a[d] = a[d] * ca + b[d] * cb; d += 1 }
        a[headDim] = m + Foundation.log(total)
    }

    /// Merges `count` records, `stride` floats apart, pairwise into the first: record i with
    /// i + 1 for even i, then i with i + 2 for i a multiple of 4, and so on (an odd one out
    /// passes up unchanged). The tree depends only on `count`.
    public static func foldPairwise(_ first: UnsafeMutablePointer<Float>, count: Int, stride: Int, headDim: Int) {
        var step = 1
        while step < count {
            var i = 0
            while i + step < count {
                merge(first + i * stride, first + (i + step) * stride, headDim: headDim)
                i += 2 * step
            }
            step *= 2
        }
        if count == 0 { setEmpty(first, headDim: headDim) }
    }

    // MARK: One block

    /// Floats per query head in a worker's score buffer: the block's rows padded to the kernels' tile.
    static func scoreStride(_ blockSize: Int) -> Int {
        let tile = Int(TESSERA_LEAN_ROW_TILE)
        return (blockSize + tile - 1) / tile * tile
    }

    /// The C block kernel of `isa` (CDecode.h: scores, softmax numerators, weighted V, record).
    static func blockKernel(_ isa: TesseraGemm.ISA) -> tessera_lean_block_kernel {
        switch isa {
        #if arch(x86_64)
        case .avx512: return tessera_lean_block_avx512
        case .avx2: return tessera_lean_block_avx2
        #else
        case .avx512, .avx2: preconditionFailure("no \(isa) kernel on this architecture (ISA.available offers only portable)")
        #endif
        case .portable: return tessera_lean_block_portable
        }
    }

    // MARK: Work split

    /// Runs `body` on `workers` equal contiguous shares of 0..<items (some possibly empty);
    /// inline for one worker.
    static func forShares(_ items: Int, workers: Int, _ body: (Range<Int>) -> Void) {
        guard workers > 1 else { body(0..<items); return }
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            body((w * items / workers)..<((w + 1) * items / workers))
        }
    }
}
