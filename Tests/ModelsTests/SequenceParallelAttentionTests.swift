import Testing
import Collectives
import Kernels
@testable import Models
import TensorCore
import _TestSupport

/// Ring and Ulysses attention on P in-process sequence ranks against the flash kernel on one
/// rank: each rank's output, logsumexp and dQ, dK, dV at its zigzag positions.
@Suite struct SequenceParallelAttentionTests {
    struct Problem {
        let batch = 2, headDim = 8
        let ranks: Int
        var heads: Int { 2 * ranks }
        var kvHeads: Int { ranks }
        /// The whole sequence: `tokens` per rank.
        let length: Int
        let q: [Float], k: [Float], v: [Float], dO: [Float]

        /// `tokens` per rank; by default 10, two zigzag chunks of 5 tokens that do not line up
        /// with the kernel's tiles.
        init(ranks: Int, tokens: Int = 10, seed: UInt64 = 7) {
            self.ranks = ranks
            length = ranks * tokens
            var rng = RNG(seed: seed)
            let (B, T, D) = (batch, ranks * tokens, headDim)
            func random(_ count: Int) -> [Float] { (0..<count).map { _ in Float(rng.nextNormal()) } }
            q = random(B * T * 2 * ranks * D); k = random(B * T * ranks * D); v = random(B * T * ranks * D)
            dO = random(B * T * 2 * ranks * D)
        }

        /// Rows (B, T, H, D) of x at `positions`, in that order.
        func rows(_ x: [Float], heads: Int, at positions: [Int]) -> [Float] {
            var out: [Float] = []
            for b in 0..<batch {
                for p in positions {
                    let width: Int = heads * headDim
                    let start: Int = (b * length + p) * width
                    out.append(contentsOf: x[start..<(start + width)])
                }
            }
            return out
        }
    }

    /// One rank's flash results over the whole sequence: o, L (B, H, T), dq, dk, dv.
    static func reference(_ p: Problem) -> (o: [Float], l: [Float], dq: [Float], dk: [Float], dv: [Float]) {
        let kernel = FlashAttention(batch: p.batch, queryLength: p.length, keyLength: p.length, heads: p.heads, kvHeads: p.kvHeads,
                                    headDim: p.headDim, causal: true, queryPositions: Array(0..<p.length), keyPositions: Array(0..<p.length))
        var o = [Float](repeating: 0, count: p.q.count), l = [Float](repeating: 0, count: kernel.logsumexpCount)
        var dq = o, dk = [Float](repeating: 0, count: p.k.count), dv = dk
        kernel.forward(q: p.q, k: p.k, v: p.v, o: &o, logsumexp: &l)
        kernel.backward(q: p.q, k: p.k, v: p.v, o: o, logsumexp: l, dO: p.dO, dq: &dq, dk: &dk, dv: &dv)
        return (o, l, dq, dk, dv)
    }

    @Test(arguments: [1, 2, 3, 4])
    func ringMatchesOneRank(ranks: Int) throws {
        try Self.checkRing(Problem(ranks: ranks), name: "ring, \(ranks) ranks") {
            SequenceSharding.positions(length: $0.length, ranks: ranks, rank: $1)
        }
    }

    /// Many units whose ranges do not divide the rank's keys (2 to 7 keys a range, the last
    /// unit shorter), on zigzag shards and on contiguous shards of odd length, B = 2,
    /// grouped-query heads: still one rank's results. The last three leave the last unit's
    /// back range empty (odd T, the range dividing (T − 1) / 2).
    @Test(arguments: [(2, 14, 3), (3, 14, 4), (4, 10, 7), (2, 9, 3), (3, 7, 2), (2, 13, 5), (2, 9, 4), (3, 7, 3), (2, 13, 3)])
    func ringInSmallUnitsMatchesOneRank(ranks: Int, tokens: Int, rangeKeys: Int) throws {
        let p = Problem(ranks: ranks, tokens: tokens, seed: 11)
        let name = "ring, \(ranks) ranks of \(tokens) tokens, \(rangeKeys) keys a range"
        if tokens % 2 == 0 {
            try Self.checkRing(p, rangeKeys: rangeKeys, name: name + ", zigzag") {
                SequenceSharding.positions(length: $0.length, ranks: ranks, rank: $1)
            }
        }
        try Self.checkRing(p, rangeKeys: rangeKeys, name: name + ", contiguous") { _, rank in
            Array((rank * tokens)..<((rank + 1) * tokens))
        }
    }

    /// A unit's K fits `unitKeyBytes` in whole key tiles, at least one tile; the last unit's
    /// back range is empty exactly when T is odd and the range divides (T − 1) / 2.
    @Test func defaultRangesAreWholeKeyTilesWithinTheUnitBudget() {
        #expect(RingAttention.units(length: 9, rangeKeys: 4).last!.back.isEmpty)
        #expect(!RingAttention.units(length: 9, rangeKeys: 3).last!.back.isEmpty)
        #expect(RingAttention.units(length: 10, rangeKeys: 5).map(\.back) == [5..<10])
        let tile = FlashAttention.defaultKeyTile
        #expect(RingAttention.defaultRangeKeys(kvHeads: 8, headDim: 64) == tile)      // 2 × 256 keys × 2 KiB = 1 MiB
        #expect(RingAttention.defaultRangeKeys(kvHeads: 4, headDim: 64) == 2 * tile)
        #expect(RingAttention.defaultRangeKeys(kvHeads: 6, headDim: 64) == tile)      // 2 tiles would be 1.5 MiB
        #expect(RingAttention.defaultRangeKeys(kvHeads: 64, headDim: 128) == tile)    // one tile even past the budget
        for (kvHeads, headDim) in [(8, 64), (4, 64), (3, 64), (1, 8), (2, 59)] {
            let keys = RingAttention.defaultRangeKeys(kvHeads: kvHeads, headDim: headDim)
            #expect(keys % tile == 0 && 2 * keys * kvHeads * headDim * 4 <= RingAttention.unitKeyBytes)
        }
    }

    /// Ring attention on the problem's ranks, each at `positions(problem, rank)`, against one
    /// rank's flash kernel: o, L, dq, dk, dv at each rank's positions.
    static func checkRing(_ p: Problem, rangeKeys: Int? = nil, name: String,
                          positions: @escaping @Sendable (Problem, Int) -> [Int]) throws {
        let expected = Self.reference(p)
        let results = InProcessCommunicator.run(size: p.ranks) { comm -> [String] in
            let positions = positions(p, comm.rank)
            let n = positions.count
            let ring = try RingAttention(batch: p.batch, length: n, heads: p.heads, kvHeads: p.kvHeads, headDim: p.headDim,
                                         positions: positions, comm: comm, rangeKeys: rangeKeys)
            let q = p.rows(p.q, heads: p.heads, at: positions), k = p.rows(p.k, heads: p.kvHeads, at: positions)
            let v = p.rows(p.v, heads: p.kvHeads, at: positions), dO = p.rows(p.dO, heads: p.heads, at: positions)
            var o = [Float](repeating: 0, count: q.count), l = [Float](repeating: 0, count: p.batch * p.heads * n)
            var dq = o, dk = [Float](repeating: 0, count: k.count), dv = dk
            try ring.forward(q: q, k: k, v: v, o: &o, logsumexp: &l, threads: .single)
            try ring.backward(q: q, k: k, v: v, o: o, logsumexp: l, dO: dO, dq: &dq, dk: &dk, dv: &dv, threads: .single)
            // L (B, H, T) at this rank's positions.
            var expectedL: [Float] = []
            for bh in 0..<(p.batch * p.heads) { for t in positions { expectedL.append(expected.l[bh * p.length + t]) } }
            return Self.compare([("o", o, p.rows(expected.o, heads: p.heads, at: positions)), ("logsumexp", l, expectedL),
                                 ("dq", dq, p.rows(expected.dq, heads: p.heads, at: positions)),
                                 ("dk", dk, p.rows(expected.dk, heads: p.kvHeads, at: positions)),
                                 ("dv", dv, p.rows(expected.dv, heads: p.kvHeads, at: positions))])
        }
        for (rank, result) in results.enumerated() {
            let failures = try result.get()
            #expect(failures.isEmpty, "\(name), rank \(rank): \(failures)")
        }
    }

    @Test(arguments: [2, 3, 4])
    func ulyssesMatchesOneRank(ranks: Int) throws {
        let p = Problem(ranks: ranks)
        let expected = Self.reference(p)
        let results = InProcessCommunicator.run(size: ranks) { comm -> [String] in
            let positions = SequenceSharding.positions(length: p.length, ranks: ranks, rank: comm.rank)
            let n = positions.count
            let ulysses = try UlyssesAttention(batch: p.batch, length: n, heads: p.heads, kvHeads: p.kvHeads, headDim: p.headDim,
                                               positions: positions, comm: comm)
            let q = p.rows(p.q, heads: p.heads, at: positions), k = p.rows(p.k, heads: p.kvHeads, at: positions)
            let v = p.rows(p.v, heads: p.kvHeads, at: positions), dO = p.rows(p.dO, heads: p.heads, at: positions)
            var o = [Float](repeating: 0, count: q.count), dq = o, dk = [Float](repeating: 0, count: k.count), dv = dk
            try ulysses.forward(q: q, k: k, v: v, o: &o, threads: .single)
            try ulysses.backward(dO: dO, dq: &dq, dk: &dk, dv: &dv, threads: .single)
            // This rank's heads' L over the whole sequence, (B, H/P, T).
            let hp = p.heads / ranks
            var expectedL: [Float] = []
            for b in 0..<p.batch {
                for h in (comm.rank * hp)..<((comm.rank + 1) * hp) {
                    let start: Int = (b * p.heads + h) * p.length
                    expectedL.append(contentsOf: expected.l[start..<(start + p.length)])
                }
            }
            return Self.compare([("o", o, p.rows(expected.o, heads: p.heads, at: positions)),
                                 ("logsumexp", Array(ulysses.logsumexp.buffer), expectedL),
                                 ("dq", dq, p.rows(expected.dq, heads: p.heads, at: positions)),
                                 ("dk", dk, p.rows(expected.dk, heads: p.kvHeads, at: positions)),
                                 ("dv", dv, p.rows(expected.dv, heads: p.kvHeads, at: positions))])
        }
        for (rank, result) in results.enumerated() {
            let failures = try result.get()
            #expect(failures.isEmpty, "ulysses, \(ranks) ranks, rank \(rank): \(failures)")
        }
    }

    @Test func zigzagPositionsAndTheirErrors() {
        #expect(SequenceSharding.positions(length: 8, ranks: 2, rank: 0) == [0, 1, 6, 7])
        #expect(SequenceSharding.positions(length: 8, ranks: 2, rank: 1) == [2, 3, 4, 5])
        #expect(SequenceSharding.positions(length: 12, ranks: 3, rank: 1) == [2, 3, 8, 9])
        #expect(SequenceSharding.problem(length: 12, ranks: 3) == nil)
        #expect(SequenceSharding.problem(length: 10, ranks: 3)?.contains("data.seq_len = 10 does not split into 2 × parallel.sequence = 6") == true)
        #expect(UlyssesAttention.problem(heads: 4, kvHeads: 2, ranks: 2) == nil)
        #expect(UlyssesAttention.problem(heads: 6, kvHeads: 2, ranks: 3)?.contains("model.heads = 6 and model.kv_heads = 2") == true)
    }

    /// Names of the tensors that differ by more than 1e-5 (relative, floored at 1).
    static func compare(_ pairs: [(String, [Float], [Float])]) -> [String] {
        pairs.compactMap { name, got, want in
            guard got.count == want.count else { return "\(name): \(got.count) values, expected \(want.count)" }
            let error = maxRelativeError(got, want)
            return error < 1e-5 ? nil : "\(name) error \(error)"
        }
    }
}
