import Testing
import Kernels
import _TestSupport

/// Every block kernel this CPU runs (AVX-512, AVX2 + FMA, portable: CDecode), not only the one
/// the process picks: against the Float64 reference on awkward sizes, and bit for bit across
/// worker counts and lane shards.
@Suite struct LeanAttentionKernelTests {
    static let isas = TesseraGemm.ISA.available(on: CPUInfo.current.features)

    /// Lengths around the block (64) and the kernels' row tiles (8, 16), a prime; query groups
    /// of 1, 2 and 4 heads per kv head; head dims below one vector, of whole vectors, and two
    /// 64-column passes over V.
    @Test(arguments: isas)
    func equalsTheFloat64Reference(isa: TesseraGemm.ISA) {
        for length in [1, 15, 63, 64, 65, 127, 1009] {
            for (heads, kvHeads) in [(2, 2), (4, 2), (8, 2)] {
                for headDim in [7, 64, 128] {
                    let problem = Problem(batch: 1, heads: heads, kvHeads: kvHeads, headDim: headDim, length: length, isa: isa)
                    let got = problem.run(workers: 2), want = problem.reference()
                    let label = "\(isa): \(heads) heads on \(kvHeads), L \(length), D \(headDim)"
                    #expect(maxRelativeError(got.o, want.o) < 1e-5, "o, \(label)")
                    #expect(maxRelativeError(got.lse, want.lse) < 1e-6, "lse, \(label)")
                }
            }
        }
    }

    /// 1, 2 and 3 workers, and 2 and 3 lane shards, give one worker's bits (GQA group 4, a
    /// partial last block, head dim 7 and 64).
    @Test(arguments: isas)
    func sameBitsForAnyWorkersAndShards(isa: TesseraGemm.ISA) {
        for headDim in [7, 64] {
            let problem = Problem(batch: 1, heads: 8, kvHeads: 2, headDim: headDim, length: 1001, lanes: 6, isa: isa)
            let one = problem.run(workers: 1)
            for workers in [2, 3] {
                let other = problem.run(workers: workers)
                #expect(other.o == one.o && other.lse == one.lse, "\(isa), D \(headDim), \(workers) workers")
            }
            for ranks in [2, 3] {
                let sharded = problem.runSharded(ranks: ranks)
                #expect(sharded.o == one.o && sharded.lse == one.lse, "\(isa), D \(headDim), \(ranks) shards")
            }
        }
    }

    /// The instruction sets agree with each other within rounding (not bit for bit).
    @Test func kernelsAgreeWithinRounding() {
        let results = Self.isas.map { Problem(batch: 2, heads: 4, kvHeads: 1, headDim: 64, length: 4099, isa: $0).run() }
        for (isa, r) in zip(Self.isas, results) {
            #expect(maxRelativeError(r.o, results.last!.o.doubles) < 1e-5, "\(isa) vs portable")
        }
    }
}

private typealias Problem = LeanAttentionTests.Problem
