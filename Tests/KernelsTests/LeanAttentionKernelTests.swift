import Testing
import Kernels
#if arch(x86_64)
import CDecode
#endif
import _TestSupport

/// Every block kernel this CPU runs (AVX-512, AVX2 + FMA, portable: CDecode), not only the one
/// the process picks: against the Float64 reference on awkward sizes, and bit for bit across
/// worker counts and lane shards.
@Suite struct LeanAttentionKernelTests {
    static let isas = TesseraGemm.ISA.available(on: CPUInfo.current.features)

    /// Lengths around the block (64) and the kernels' row tiles (8, 16), a prime; query groups
    /// of 1, 2 and 4 heads per kv head; head dims below one vector, between vectors (12: one
    /// AVX2 vector and a tail), of whole vectors, with a tail in the second 64-column pass over V
    /// (72, 100) and two whole passes (128); blocks of 64, and of 24 (not a multiple of the
    /// AVX-512 row tile).
    @Test(arguments: isas)
    func equalsTheFloat64Reference(isa: TesseraGemm.ISA) {
        for (length, blockSize) in [(1, 64), (15, 64), (63, 64), (64, 64), (65, 64), (127, 64), (1009, 64), (101, 24), (1009, 24)] {
            for (heads, kvHeads) in [(2, 2), (4, 2), (8, 2)] {
                for headDim in [7, 12, 64, 72, 100, 128] {
                    let problem = Problem(batch: 1, heads: heads, kvHeads: kvHeads, headDim: headDim, length: length, blockSize: blockSize,
                                          isa: isa)
                    let got = problem.run(workers: 2), want = problem.reference()
                    let label = "\(isa): \(heads) heads on \(kvHeads), L \(length), D \(headDim), blocks of \(blockSize)"
                    #expect(maxRelativeError(got.o, want.o) < 1e-5, "o, \(label)")
                    #expect(maxRelativeError(got.lse, want.lse) < 1e-6, "lse, \(label)")
                }
            }
        }
    }

    /// 1, 2, 3, 5 and 7 workers, and 2 and 3 lane shards, give one worker's bits (GQA group 4,
    /// head dim 7 and 64). Lengths: one position, a block ± 1, a prime, and several rounds of 6
    /// lanes ± 1 (shares then begin and end inside one head's lanes and rounds).
    @Test(arguments: isas)
    func sameBitsForAnyWorkersAndShards(isa: TesseraGemm.ISA) {
        for headDim in [7, 64] {
            for length in [1, 63, 65, 1001, 1009, 64 * 6 * 3 - 1, 64 * 6 * 3 + 1] {
                let problem = Problem(batch: 1, heads: 8, kvHeads: 2, headDim: headDim, length: length, lanes: 6, isa: isa)
                let one = problem.run(workers: 1)
                let label = "\(isa), D \(headDim), L \(length)"
                for workers in [2, 3, 5, 7] {
                    let other = problem.run(workers: workers)
                    #expect(other.o == one.o && other.lse == one.lse, "\(label), \(workers) workers")
                }
                for ranks in [2, 3] {
                    let sharded = problem.runSharded(ranks: ranks)
                    #expect(sharded.o == one.o && sharded.lse == one.lse, "\(label), \(ranks) shards")
                }
                #expect(maxRelativeError(one.o, problem.reference().o) < 1e-5, "\(label) against the reference")
            }
        }
    }

    #if arch(x86_64)
    /// The AVX-512 kernel's unrolled path for head dim 64 in blocks of 64 rows gives the bits of
    /// the same kernel without it: lengths around the block (the last block partial or not), a
    /// prime, several rounds of 6 lanes ± 1; query groups of 1, 2 and 4; each head's lanes walked
    /// in two calls, the first fetching the second's first block, the second the next head's.
    @Test(.enabled(if: isas.contains(.avx512)))
    func avx512HeadDim64PathKeepsTheBits() {
        for length in [1, 63, 64, 65, 1001, 1009, 64 * 6 * 3 - 1, 64 * 6 * 3 + 1, 4099] {
            for (heads, lanes) in [(2, 6), (4, 64), (8, 6)] {
                let problem = Problem(batch: 1, heads: heads, kvHeads: 2, headDim: 64, length: length, lanes: lanes, isa: .avx512)
                let fast = Self.records(problem, tessera_lean_lanes_avx512), any = Self.records(problem, tessera_lean_lanes_avx512_any)
                #expect(fast == any, "\(heads) heads on 2, L \(length), \(lanes) lanes")
                #expect(fast.allSatisfy { !$0.isNaN }, "\(heads) heads on 2, L \(length), \(lanes) lanes: NaN in the records")
            }
        }
    }

    /// Every lane record (Hq, lanes, D + 1) of `kernel` on the problem's cache.
    fileprivate static func records(_ p: Problem, _ kernel: tessera_lean_lanes_kernel) -> [Float] {
        let a = p.attention, D = a.headDim, G = a.heads / a.kvHeads, size = D + 1, lanes = a.lanes, cut = lanes / 2
        let scoreStride = (a.blockSize + 15) / 16 * 16, firstRows = min(a.blockSize, p.length)
        var out = [Float](repeating: .nan, count: a.heads * lanes * size)
        var scratch = [Float](repeating: 0, count: G * (scoreStride + 2 * lanes))
        p.q.withUnsafeBufferPointer { q in p.k.withUnsafeBufferPointer { k in p.v.withUnsafeBufferPointer { v in
            out.withUnsafeMutableBufferPointer { out in scratch.withUnsafeMutableBufferPointer { scratch in
                let (q, k, v, out, scratch) = (q.baseAddress!, k.baseAddress!, v.baseAddress!, out.baseAddress!, scratch.baseAddress!)
                for h in 0..<a.kvHeads {
                    let base = h * p.capacity * D, record = out + h * G * lanes * size, next = (h + 1) * p.capacity * D
                    let hasNext = h + 1 < a.kvHeads && p.length > 0
                    // Lanes [0, cut) fetch lane cut's first block (round 0), when it has one.
                    let cutBlock = cut * a.blockSize < p.length
                    kernel(D, G, 1 / Float(D).squareRoot(), q + h * G * D, k + base, v + base, p.length, a.blockSize, lanes, 0, cut,
                           record, lanes * size, scratch, scoreStride, cutBlock ? k + base + cut * a.blockSize * D : nil,
                           cutBlock ? v + base + cut * a.blockSize * D : nil, cutBlock ? min(a.blockSize, p.length - cut * a.blockSize) : 0)
                    kernel(D, G, 1 / Float(D).squareRoot(), q + h * G * D, k + base, v + base, p.length, a.blockSize, lanes, cut, lanes,
                           record, lanes * size, scratch, scoreStride, hasNext ? k + next : nil, hasNext ? v + next : nil,
                           hasNext ? firstRows : 0)
                }
            } }
        } } }
        return out
    }
    #endif

    /// The instruction sets agree with each other within rounding (not bit for bit).
    @Test func kernelsAgreeWithinRounding() {
        let results = Self.isas.map { Problem(batch: 2, heads: 4, kvHeads: 1, headDim: 64, length: 4099, isa: $0).run() }
        for (isa, r) in zip(Self.isas.dropLast(), results) {
            #expect(maxRelativeError(r.o, results.last!.o.doubles) < 1e-5, "o, \(isa) vs portable")
            #expect(maxRelativeError(r.lse, results.last!.lse.doubles) < 1e-6, "lse, \(isa) vs portable")
        }
    }
}

private typealias Problem = LeanAttentionTests.Problem
