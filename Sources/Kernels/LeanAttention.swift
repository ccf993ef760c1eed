import CDecode
import Dispatch
import Foundation

/// Decode attention ("lean attention"): one new query token per (batch, query head) against a
/// KV cache of `length` positions, with grouped-query heads (Hq a multiple of Hkv).
///
/// The reduction tree is fixed by block index, never by the split of the work, so the result
/// does not depend on the number of workers, bit for bit: block i (of `blockSize` positions)
/// belongs to lane i mod `lanes` at round i / `lanes`; each lane folds its blocks in round order
/// with the online softmax (a running maximum, sum and unnormalised output, rescaled when the
/// maximum grows) into one partial (o, lse): o the softmax-weighted mean of V over the lane's
/// positions, lse the log of its softmax denominator (with the scores' scale). The lanes then
/// merge in one flat weighted sum in lane order (`foldLanes`). A cache sharded over ranks by
/// lane (rank r holding the lanes l with l mod N = r, blocks in global order) gives each rank
/// complete lane partials (`lanePartials`); gathering them and folding the lanes gives every
/// rank count the same bits.
///
/// Work split: the work is the list of (batch, kv head, lane) items; every worker takes a
/// contiguous share of it holding an equal share of the blocks, so a share may begin and end
/// inside one head's lanes. A worker reads each block of K and V once for all the query heads
/// of its group, round after round over its lanes: in address order when it holds whole heads.
/// Nothing is written per block: one record per (query head, lane).
///
/// The lanes come from a C kernel (CDecode) for the widest instruction set of the CPU
/// (`TesseraGemm.isa`: AVX-512, AVX2 + FMA or portable; `TESSERA_GEMM_ISA` overrides it). The same
/// kernel gives the same bits for a lane wherever it runs; two instruction sets agree within
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
        let records = PackBuffers.current.partials.reserve(batch * heads * lanes * recordSize)
        lanePartials(q: q, k: k, v: v, length: length, capacity: capacity, ownedLanes: Array(0..<lanes), records: records,
                     threads: threads, workers: workers)
        for pair in 0..<(batch * heads) {
            Self.foldLanes(records + pair * lanes * recordSize, count: lanes, headDim: headDim, o: o + pair * headDim, lse: lse.map { $0 + pair })
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
        let blocks = blockCount(length: length), pairs = batch * kvHeads, items = pairs * c
        let workerCount = max(1, min(workers ?? threads.count, items))
        /// Blocks of the items before `item` (pair-major, lane-minor): local lane j holds the
        /// blocks j, j + c, … below `blocks`.
        func blocksBefore(_ item: Int) -> Int {
            let lane = item % c
            return item / c * blocks + blocks / c * lane + min(lane, blocks % c)
        }
        /// The first item of worker w's share: where its equal part of the blocks begins.
        func shareStart(_ w: Int) -> Int {
            if w >= workerCount { return items }
            let target = w * (pairs * blocks) / workerCount
            var (low, high) = (0, items)
            while low < high {
                let mid = (low + high) / 2
                if blocksBefore(mid) < target { low = mid + 1 } else { high = mid }
            }
            return low
        }
        let kernel = Self.lanesKernel(isa), D = headDim, G = group, scoreStride = Self.scoreStride(blockSize)
        Self.forShares(workerCount) { w in
            let share = shareStart(w)..<shareStart(w + 1)
            guard !share.isEmpty else { return }
            let scratch = PackBuffers.current.scores.reserve(G * (scoreStride + 2 * c))
            var item = share.lowerBound
            while item < share.upperBound {
                let pair = item / c, from = item % c, to = min(c, share.upperBound - pair * c)
                let b = pair / kvHeads, kvh = pair % kvHeads, firstHead = b * heads + kvh * group
                let base = pair * capacity * D
                // The next pair's first block, fetched while this pair's last one runs.
                let after = to == c && (pair + 1) * c < share.upperBound && blocks > 0 ? (pair + 1) * capacity * D : -1
                kernel(D, G, scale, q + firstHead * D, k + base, v + base, length, blockSize, c, from, to,
                       records + firstHead * c * size, c * size, scratch, scoreStride,
                       after >= 0 ? k + after : nil, after >= 0 ? v + after : nil, after >= 0 ? min(blockSize, length) : 0)
                item = pair * c + to
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

    /// The partial of `count` records (lanes), `stride` floats apart, into o (D floats) and lse
    /// (optional): with M the largest lse and w_l = exp(lse_l − M), o = Σ w_l o_l / Σ w_l and
    /// lse = M + log Σ w_l, the sums in record order. No records, or only empty ones, give the
    /// empty partial.
    public static func foldLanes(_ first: UnsafePointer<Float>, count: Int, stride: Int? = nil, headDim: Int,
                                 o: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>? = nil) {
        let stride = stride ?? headDim + 1
        var maximum = -Float.infinity
        for l in 0..<count { maximum = max(maximum, first[l * stride + headDim]) }
        guard maximum > -.infinity else {
            o.update(repeating: 0, count: headDim)
            lse?.pointee = -.infinity
            return
        }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: count) { weights in
            var total: Float = 0
            for l in 0..<count {
                weights[l] = Foundation.exp(first[l * stride + headDim] - maximum)
                total += weights[l]
            }
            let inverse = 1 / total
            var d = 0
            while d + 8 <= headDim {
                var sum = VectorMath.Lanes()
                for l in 0..<count { sum += VectorMath.load(first + l * stride + d) * weights[l] }
                VectorMath.store(sum * inverse, o + d)
                d += 8
            }
            while d < headDim {
                var sum: Float = 0
                for l in 0..<count { sum += first[l * stride + d] * weights[l] }
                o[d] = sum * inverse
                d += 1
            }
            lse?.pointee = maximum + Foundation.log(total)
        }
    }

    // MARK: The kernel

    /// Floats per query head in a worker's score buffer: the block's rows padded to the kernels' tile.
    static func scoreStride(_ blockSize: Int) -> Int {
        let tile = Int(TESSERA_LEAN_ROW_TILE)
        return (blockSize + tile - 1) / tile * tile
    }

    /// The C lane kernel of `isa` (CDecode.h: the online fold of a head's lanes into records).
    static func lanesKernel(_ isa: TesseraGemm.ISA) -> tessera_lean_lanes_kernel {
        switch isa {
        #if arch(x86_64)
        case .avx512: return tessera_lean_lanes_avx512
        case .avx2: return tessera_lean_lanes_avx2
        #else
        case .avx512, .avx2: preconditionFailure("no \(isa) kernel on this architecture (ISA.available offers only portable)")
        #endif
        case .portable: return tessera_lean_lanes_portable
        }
    }

    // MARK: Work split

    /// Runs `body(w)` for w in 0..<workers, at once on the kernel threads; inline for one worker.
    static func forShares(_ workers: Int, _ body: (Int) -> Void) {
        guard workers > 1 else { body(0); return }
        DispatchQueue.concurrentPerform(iterations: workers, execute: body)
    }
}
