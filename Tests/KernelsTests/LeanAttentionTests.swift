import Testing
import Kernels
import TensorCore
import _TestSupport

@Suite struct LeanAttentionTests {
    /// A decode problem: q (B, Hq, D) and a cache (B, Hkv, capacity, D) whose rows past `length`
    /// hold NaN, so reading one poisons the result.
    struct Problem {
        let attention: LeanAttention
        let length: Int, capacity: Int
        let q: [Float], k: [Float], v: [Float]          // k, v padded to capacity
        let kCompact: [Float], vCompact: [Float]        // (B, Hkv, length, D) for the reference

        init(batch: Int, heads: Int, kvHeads: Int, headDim: Int, length: Int, blockSize: Int = 64, lanes: Int = 64, seed: UInt64 = 71,
             isa: TesseraGemm.ISA = TesseraGemm.isa) {
            attention = LeanAttention(batch: batch, heads: heads, kvHeads: kvHeads, headDim: headDim, blockSize: blockSize, lanes: lanes, isa: isa)
            self.length = length
            capacity = length + 3
            q = Fixtures.randoms(batch * heads * headDim, seed: seed, scale: 2)
            kCompact = Fixtures.randoms(batch * kvHeads * length * headDim, seed: seed + 1)
            vCompact = Fixtures.randoms(batch * kvHeads * length * headDim, seed: seed + 2)
            var k = [Float](repeating: .nan, count: batch * kvHeads * capacity * headDim), v = k
            for head in 0..<(batch * kvHeads) {
                for j in 0..<(length * headDim) {
                    k[head * capacity * headDim + j] = kCompact[head * length * headDim + j]
                    v[head * capacity * headDim + j] = vCompact[head * length * headDim + j]
                }
            }
            self.k = k; self.v = v
        }

        func run(workers: Int? = nil, threads: KernelThreads = .single) -> (o: [Float], lse: [Float]) {
            let a = attention
            var o = [Float](repeating: 0, count: a.batch * a.heads * a.headDim), lse = [Float](repeating: 0, count: a.batch * a.heads)
            a.forward(q: q, k: k, v: v, length: length, capacity: capacity, o: &o, lse: &lse, threads: threads, workers: workers)
            return (o, lse)
        }

        /// o and lse from `ranks` lane shards (batch 1): rank r computes the lane partials of the
        /// positions whose lane l has l mod ranks = r (on r + 1 workers), then the lanes fold.
        func runSharded(ranks: Int) -> (o: [Float], lse: [Float]) {
            let a = attention, size = a.recordSize, lanes = a.lanes, blockSize = a.blockSize
            let (H, Hkv, D, L) = (a.heads, a.kvHeads, a.headDim, length)
            precondition(a.batch == 1, "runSharded: batch 1")
            var placed = [Float](repeating: 0, count: H * lanes * size)
            for r in 0..<ranks {
                let owned = (0..<lanes).filter { $0 % ranks == r }
                let positions = (0..<L).filter { owned.contains(($0 / blockSize) % lanes) }
                var k: [Float] = [], v: [Float] = []
                for head in 0..<Hkv {
                    for p in positions {
                        k += kCompact[((head * L) + p) * D..<((head * L) + p + 1) * D]
                        v += vCompact[((head * L) + p) * D..<((head * L) + p + 1) * D]
                    }
                }
                var records = [Float](repeating: 0, count: H * owned.count * size)
                if !owned.isEmpty {
                    a.lanePartials(q: q, k: k, v: v, length: positions.count, capacity: positions.count, ownedLanes: owned,
                                   records: &records, workers: r + 1)
                }
                for h in 0..<H {
                    for (i, lane) in owned.enumerated() {
                        for x in 0..<size { placed[(h * lanes + lane) * size + x] = records[(h * owned.count + i) * size + x] }
                    }
                }
            }
            var o = [Float](repeating: 0, count: H * D), lse = [Float](repeating: 0, count: H)
            placed.withUnsafeBufferPointer { p in o.withUnsafeMutableBufferPointer { o in lse.withUnsafeMutableBufferPointer { lse in
                for h in 0..<H {
                    LeanAttention.foldLanes(p.baseAddress! + h * lanes * size, count: lanes, headDim: D, o: o.baseAddress! + h * D,
                                            lse: lse.baseAddress! + h)
                }
            } } }
            return (o, lse)
        }

        func reference() -> (o: [Double], lse: [Double]) {
            let a = attention
            return Reference.decodeAttention(q: q.doubles, k: kCompact.doubles, v: vCompact.doubles, batch: a.batch, length: length,
                                             heads: a.heads, kvHeads: a.kvHeads, headDim: a.headDim)
        }
    }

    static let lengths = [1, 7, 63, 64, 65, 1000, 4099]
    static let headDims = [32, 59, 64]

    /// MHA (2 heads) and GQA (6 query heads on 2), two sequences each.
    @Test(arguments: lengths, headDims)
    func equalsNaiveAttention(length: Int, headDim: Int) {
        for (heads, kvHeads) in [(2, 2), (6, 2)] {
            let problem = Problem(batch: 2, heads: heads, kvHeads: kvHeads, headDim: headDim, length: length)
            let got = problem.run(), want = problem.reference()
            #expect(maxRelativeError(got.o, want.o) < 1e-5, "o, \(heads) heads on \(kvHeads), L \(length), D \(headDim)")
            #expect(maxRelativeError(got.lse, want.lse) < 1e-6, "lse, \(heads) heads on \(kvHeads), L \(length), D \(headDim)")
        }
    }

    /// 1 worker, 7 (a prime that divides nothing here), more workers than work items, and the
    /// kernel threads' own split all give the same bits.
    @Test(arguments: [1, 65, 1000, 4099])
    func workerCountDoesNotChangeTheBits(length: Int) {
        let problem = Problem(batch: 2, heads: 6, kvHeads: 2, headDim: 59, length: length)
        let items = 2 * 2 * problem.attention.blockCount(length: length)
        let one = problem.run(workers: 1)
        for workers in [2, 7, items + 5] {
            let other = problem.run(workers: workers)
            #expect(other.o == one.o && other.lse == one.lse, "\(workers) workers")
        }
        let threaded = problem.run(threads: KernelThreads(2))
        #expect(threaded.o == one.o && threaded.lse == one.lse)
        #expect(maxRelativeError(one.o, problem.reference().o) < 1e-5)
    }

    /// Small blocks and few lanes (several rounds per lane) still equal the naive kernel.
    @Test func smallBlocksAndFewLanesEqualNaive() {
        let problem = Problem(batch: 1, heads: 4, kvHeads: 1, headDim: 32, length: 1000, blockSize: 8, lanes: 5)
        #expect(maxRelativeError(problem.run(workers: 3).o, problem.reference().o) < 1e-5)
    }

    /// A cache sharded over N "ranks" by lane (rank r holds the blocks whose lane l has
    /// l mod N = r, in global order): the ranks' lane partials, placed by lane and folded, are
    /// bit for bit the one-process result.
    @Test(arguments: [2, 3, 5])
    func laneShardsMergeToTheSameBits(ranks: Int) {
        let problem = Problem(batch: 1, heads: 4, kvHeads: 2, headDim: 59, length: 1001, blockSize: 8, lanes: 6)
        let sharded = problem.runSharded(ranks: ranks), whole = problem.run()
        #expect(sharded.o == whole.o && sharded.lse == whole.lse)
    }

    // MARK: The merge algebra

    /// Partials of random chunks of the positions (one empty), merged in random orders and
    /// trees, equal the one-shot attention over all positions within 1e-6.
    @Test func randomMergeTreesEqualOneShot() {
        let (L, D) = (1000, 59)
        let problem = Problem(batch: 1, heads: 1, kvHeads: 1, headDim: D, length: L)
        let oneShot = problem.reference()
        var rng = RNG(seed: 99)
        var cuts = Set((0..<12).map { _ in rng.nextInt(below: L) })
        cuts.insert(0); cuts.insert(L)
        let sorted = cuts.sorted()
        var chunks = zip(sorted, sorted.dropFirst()).map { $0..<$1 }
        chunks.append(400..<400)   // an empty chunk
        let partials: [[Float]] = chunks.map { range in
            let r = Reference.decodeAttention(q: problem.q.doubles, k: problem.kCompact.doubles, v: problem.vCompact.doubles,
                                              batch: 1, length: L, heads: 1, kvHeads: 1, headDim: D, positions: range)
            return (r.o + r.lse).floats
        }
        #expect(partials.last!.last! == -.infinity)
        for _ in 0..<20 {
            var pool = partials
            while pool.count > 1 {
                let i = rng.nextInt(below: pool.count)
                var a = pool.remove(at: i)
                let b = pool.remove(at: rng.nextInt(below: pool.count))
                LeanAttention.merge(&a, b, headDim: D)
                pool.insert(a, at: rng.nextInt(below: pool.count + 1))
            }
            let merged = pool[0]
            #expect(maxRelativeError(merged.prefix(D), oneShot.o) < 1e-6)
            #expect(maxRelativeError([merged[D]], oneShot.lse) < 1e-6)
        }
    }

    /// An empty partial (lse = −∞) changes nothing, on either side; two empties stay empty.
    @Test func mergingAnEmptyPartialChangesNothing() {
        let D = 13
        let a = Fixtures.randoms(D, seed: 5) + [2.5]
        var empty = [Float](repeating: 0, count: D + 1)
        LeanAttention.setEmpty(&empty, headDim: D)
        var left = a
        LeanAttention.merge(&left, empty, headDim: D)
        #expect(left == a)
        var right = empty
        LeanAttention.merge(&right, a, headDim: D)
        #expect(right == a)
        var both = empty
        LeanAttention.merge(&both, empty, headDim: D)
        #expect(both == empty)
        // Commutative bit for bit.
        let b = Fixtures.randoms(D, seed: 6) + [1.5]
        var ab = a, ba = b
        LeanAttention.merge(&ab, b, headDim: D)
        LeanAttention.merge(&ba, a, headDim: D)
        #expect(ab == ba && ab != a)
    }

    /// Folding lanes: empty lanes around one partial leave it bit for bit; only empty lanes
    /// (or none) give the empty partial; the fold of partials equals their pairwise merges.
    @Test func foldingLanesSkipsEmptyOnes() {
        let D = 13, size = D + 1
        let a = Fixtures.randoms(D, seed: 7) + [0.75], b = Fixtures.randoms(D, seed: 8) + [-1.25]
        var empty = [Float](repeating: 0, count: size)
        LeanAttention.setEmpty(&empty, headDim: D)
        func fold(_ records: [Float]) -> [Float] {
            var o = [Float](repeating: .nan, count: D), lse: Float = .nan
            records.withUnsafeBufferPointer { r in
                LeanAttention.foldLanes(r.baseAddress!, count: records.count / size, headDim: D, o: &o, lse: &lse)
            }
            return o + [lse]
        }
        #expect(fold(empty + empty + a + empty) == a)
        #expect(fold(empty + empty) == empty)
        var none = [Float](repeating: .nan, count: D), noneLSE: Float = .nan
        LeanAttention.foldLanes([], count: 0, headDim: D, o: &none, lse: &noneLSE)
        #expect(none + [noneLSE] == empty)
        var merged = a
        LeanAttention.merge(&merged, b, headDim: D)
        #expect(maxRelativeError(fold(a + empty + b), merged.doubles) < 1e-6)
    }

    /// An empty cache gives the empty partial (o = 0, lse = −∞), not NaN.
    @Test func anEmptyCacheGivesTheEmptyPartial() {
        let problem = Problem(batch: 1, heads: 2, kvHeads: 1, headDim: 8, length: 0)
        let r = problem.run(workers: 3)
        #expect(r.o == [Float](repeating: 0, count: 16) && r.lse == [-.infinity, -.infinity])
    }
}
