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

    public init(batch: Int, heads: Int, kvHeads: Int, headDim: Int,
                blockSize: Int = LeanAttention.defaultBlockSize, lanes: Int = LeanAttention.defaultLanes) {
        precondition(batch >= 1 && heads >= 1 && kvHeads >= 1 && headDim >= 1, "LeanAttention: sizes must be at least 1")
        precondition(heads % kvHeads == 0, "LeanAttention: \(heads) heads do not split into \(kvHeads) kv heads")
        precondition(blockSize >= 1 && lanes >= 1, "LeanAttention: blockSize and lanes must be at least 1")
        self.batch = batch; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        self.blockSize = blockSize; self.lanes = lanes
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
        // Per-block partials (B, Hq, blocks), computed in equal shares of (batch, kv head, block).
        let perBlock = UnsafeMutablePointer<Float>.allocate(capacity: max(1, batch * heads * blocks * size))
        defer { perBlock.deallocate() }
        let items = batch * kvHeads * blocks
        Self.forShares(items, workers: workerCount) { share in
            guard !share.isEmpty else { return }
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: group * blockSize)
            let accumulators = UnsafeMutablePointer<Float>.allocate(capacity: group * headDim)
            defer { scores.deallocate(); accumulators.deallocate() }
            for item in share {
                let block = item % blocks, pair = item / blocks          // pair = b · Hkv + kvh
                let b = pair / kvHeads, kvh = pair % kvHeads
                let start = block * blockSize, rows = min(blockSize, length - start)
                let cacheOffset = (pair * capacity + start) * headDim
                let firstHead = b * heads + kvh * group
                blockPartial(q: q + firstHead * headDim, k: k + cacheOffset, v: v + cacheOffset, rows: rows,
                             out: perBlock + (firstHead * blocks + block) * size, headStride: blocks * size,
                             scores: scores, accumulators: accumulators)
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

    /// Partials of the `group` query heads at `q` (consecutive) over `rows` cache rows: record
    /// g at out + g · headStride.
    @inline(__always)
    private func blockPartial(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, rows: Int,
                              out: UnsafeMutablePointer<Float>, headStride: Int,
                              scores: UnsafeMutablePointer<Float>, accumulators: UnsafeMutablePointer<Float>) {
        let D = headDim, G = group, s = scale
        // Scores: each K row is read once and dotted with every query head of the group.
        var j = 0
        while j + 4 <= rows {
            let k0 = k + j * D
            for g in 0..<G {
                let d4 = Self.dot4(q + g * D, k0, D)
                scores[g * blockSize + j] = d4.x * s
                scores[g * blockSize + j + 1] = d4.y * s
                scores[g * blockSize + j + 2] = d4.z * s
                scores[g * blockSize + j + 3] = d4.w * s
            }
            j += 4
        }
        while j < rows {
            for g in 0..<G { scores[g * blockSize + j] = Self.dot(q + g * D, k + j * D, D) * s }
            j += 1
        }
        // Softmax numerators per head; the maxima go into the records' lse slot for now.
        for g in 0..<G {
            let row = scores + g * blockSize
            var maximum = -Float.infinity
            for i in 0..<rows { maximum = max(maximum, row[i]) }
            for i in 0..<rows { row[i] -= maximum }
            VectorMath.exp(row, row, count: rows)
            out[g * headStride + D] = maximum
        }
        // o = Σ p_j v_j: each V row is read once for every head of the group.
        accumulators.update(repeating: 0, count: G * D)
        for i in 0..<rows {
            let vi = v + i * D
            for g in 0..<G {
                let p = scores[g * blockSize + i], acc = accumulators + g * D
                let weight = VectorMath.Lanes(repeating: p)
                var d = 0
                while d + 8 <= D {
                    VectorMath.store(VectorMath.load(acc + d) + weight * VectorMath.load(vi + d), acc + d)
                    d += 8
                }
                while d < D { acc[d] += p * vi[d]; d += 1 }
            }
        }
        for g in 0..<G {
            let row = scores + g * blockSize, record = out + g * headStride
            var sum: Float = 0
            for i in 0..<rows { sum += row[i] }
            let inverse = 1 / sum, acc = accumulators + g * D
            for d in 0..<D { record[d] = acc[d] * inverse }
            record[D] += Foundation.log(sum)
        }
    }

    /// a · b over n floats: eight lanes at a time, the lanes summed in a fixed order, then the tail.
    @inline(__always)
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = VectorMath.Lanes(repeating: 0)
        var d = 0
        while d + 8 <= n { acc += VectorMath.load(a + d) * VectorMath.load(b + d); d += 8 }
        var total = acc.sum()
        while d < n { total += a[d] * b[d]; d += 1 }
        return total
    }

    /// `dot(a, b + r·n, n)` for the four consecutive rows r = 0..<4 of b, bit for bit, with four
    /// independent accumulators.
    @inline(__always)
    static func dot4(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> SIMD4<Float> {
        var a0 = VectorMath.Lanes(repeating: 0), a1 = a0, a2 = a0, a3 = a0
        let b1 = b + n, b2 = b + 2 * n, b3 = b + 3 * n
        var d = 0
        while d + 8 <= n {
            let x = VectorMath.load(a + d)
            a0 += x * VectorMath.load(b + d)
            a1 += x * VectorMath.load(b1 + d)
            a2 += x * VectorMath.load(b2 + d)
            a3 += x * VectorMath.load(b3 + d)
            d += 8
        }
        var t = SIMD4<Float>(a0.sum(), a1.sum(), a2.sum(), a3.sum())
        while d < n { t += SIMD4(repeating: a[d]) * SIMD4(b[d], b1[d], b2[d], b3[d]); d += 1 }
        return t
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
