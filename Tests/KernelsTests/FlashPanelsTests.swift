import Testing
@testable import Kernels
import _TestSupport

/// Flash attention on operands packed once per call (`FlashPanels`) against the same kernel
/// through `Matmul.gemm` (which packs every tile for every product): the same bits, forward and
/// backward, on awkward sizes, masks, head layouts, ring attention's accumulating calls and
/// thread counts. (Against the naive twins: `FlashAttentionTests`, which run bf16 packed and Float32 through
/// `Matmul.gemm`, the default of `FlashAttention.packsPanels`.)
@Suite struct FlashPanelsTests {
    typealias Case = FlashAttentionTests.Case

    static let cases: [Case] = [
        Case(queries: 1, keys: 1, headDim: 7, causal: true, heads: 2, kvHeads: 1, batch: 2),
        Case(queries: 1, keys: 147, headDim: 59, causal: true, batch: 2),
        Case(queries: 3, keys: 799, headDim: 128, causal: false, heads: 2, kvHeads: 1),
        Case(queries: 37, keys: 37, headDim: 256, causal: true, queryTile: 13, keyTile: 17),
        Case(queries: 113, keys: 203, headDim: 64, causal: true, heads: 4, kvHeads: 2, batch: 2, queryTile: 16, keyTile: 32),
        Case(queries: 131, keys: 257, headDim: 33, causal: false, heads: 3, kvHeads: 1, queryTile: 29, keyTile: 61),
        Case(queries: 257, keys: 257, headDim: 64, causal: true, heads: 2, kvHeads: 2),
        Case(queries: 300, keys: 200, headDim: 17, causal: true, heads: 2, kvHeads: 1, queryTile: 256, keyTile: 256),
        Case(queries: 29, keys: 41, headDim: 8, causal: true, heads: 2, kvHeads: 1, batch: 2, queryTile: 8, keyTile: 16,
             queryPositions: (0..<29).map { ($0 * 7) % 41 }, keyPositions: (0..<41).map { ($0 * 11) % 41 }),
        // Keys in descending positions 45 … 5: queries 0–4 see no key at all (o = 0, L = −∞), the
        // others none of the first key tile's, so their first visible tile is a later one.
        Case(queries: 29, keys: 41, headDim: 8, causal: true, heads: 2, kvHeads: 1, queryTile: 8, keyTile: 16,
             queryPositions: Array(0..<29), keyPositions: (0..<41).map { 45 - $0 }),
    ]

    /// Forward, then backward, on `threads`; `accumulate` runs ring attention's calls: a second
    /// forward over the same keys merged into the first, a backward with given statistics added
    /// to gradients already there.
    static func run(_ kernel: FlashAttention, _ x: (q: [Float], k: [Float], v: [Float], dO: [Float]), threads: Int,
                    accumulate: Bool, precision: ComputePrecision = .fp32) -> [[Float]] {
        let t = KernelThreads(threads)
        var o = [Float](repeating: .nan, count: x.q.count), l = [Float](repeating: .nan, count: kernel.logsumexpCount)
        var (dq, dk, dv) = ([Float](repeating: .nan, count: x.q.count), [Float](repeating: .nan, count: x.k.count),
                            [Float](repeating: .nan, count: x.k.count))
        kernel.forward(q: x.q, k: x.k, v: x.v, o: &o, logsumexp: &l, threads: t, precision: precision)
        kernel.backward(q: x.q, k: x.k, v: x.v, o: o, logsumexp: l, dO: x.dO, dq: &dq, dk: &dk, dv: &dv, threads: t,
                        precision: precision)
        guard accumulate else { return [o, l, dq, dk, dv] }
        kernel.forward(q: x.q, k: x.v, v: x.k, o: &o, logsumexp: &l, accumulate: true, threads: t, precision: precision)
        var rowDot = [Float](repeating: 0, count: kernel.logsumexpCount)
        FlashAttention.rowDot(o: o, dO: x.dO, into: &rowDot, batch: kernel.batch, length: kernel.queryLength,
                              heads: kernel.heads, headDim: kernel.headDim)
        kernel.backward(q: x.q, k: x.k, v: x.v, logsumexp: l, rowDot: rowDot, dO: x.dO, dq: &dq, dk: &dk, dv: &dv,
                        accumulate: true, threads: t, precision: precision)
        return [o, l, dq, dk, dv]
    }

    @Test(arguments: cases)
    func packedPanelsGiveTheBitsOfMatmulGemm(_ c: Case) throws {
        var kernel = c.kernel
        kernel.packsPanels = true   // Float32 runs through Matmul.gemm unless told (FlashAttention.packsPanels)
        // Tessera's GEMM is the process's (kernels.gemm auto on this machine's OpenBLAS core).
        try #require(FlashPanels.available(headDim: c.headDim, queryTile: kernel.queryTile, keyTile: kernel.keyTile) != nil,
                     "the packed path is not taken: GEMM \(Matmul.implementationDescription)")
        var unpacked = kernel
        unpacked.packsPanels = false
        let x = c.inputs()
        for accumulate in [false, true] {
            let reference = Self.run(unpacked, x, threads: 1, accumulate: accumulate)
            #expect(reference.allSatisfy { $0.allSatisfy { !$0.isNaN } }, "\(c.testDescription): an output was not written")
            for threads in [1, 2, 3] {
                let packed = Self.run(kernel, x, threads: threads, accumulate: accumulate)
                for (name, (got, want)) in zip(["o", "logsumexp", "dq", "dk", "dv"], zip(packed, reference)) {
                    #expect(got.map(\.bitPattern) == want.map(\.bitPattern),
                            "\(c.testDescription), \(threads) threads, accumulate \(accumulate): \(name) differs from Matmul.gemm's bits")
                }
            }
        }
    }

    /// Depths beyond one KC block keep `Matmul.gemm` (its blocks decide the bits).
    @Test func depthsBeyondOneBlockKeepMatmulGemm() {
        #expect(FlashPanels.available(headDim: TesseraGemm.kc + 1, queryTile: 128, keyTile: 256) == nil)
        #expect(FlashPanels.available(headDim: 64, queryTile: TesseraGemm.kc + 1, keyTile: 256) == nil)
        #expect(FlashPanels.available(headDim: 64, queryTile: 128, keyTile: TesseraGemm.kc + 1) == nil)
    }
}
