import Testing
import Kernels
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
