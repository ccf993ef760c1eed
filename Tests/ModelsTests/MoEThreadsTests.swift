import Testing
@testable import Models
import Kernels
import TensorCore
import _TestSupport

/// The experts of a mixture-of-experts layer run in parallel across kernel threads, one thread
/// per expert: the split balances rows, and the results do not depend on the thread count.
@Suite struct MoEThreadsTests {
    @Test func expertSetsBalanceRowsLargestFirstAndCoverEveryExpertWithRowsOnce() {
        // 9 + 2 | 7 + 3 + 1 = 11 | 11; contiguous groups (cut where the rows pass half) had 9 + 1 + 7 | 3 + 2 = 17 | 5.
        #expect(SwiGLUExperts.balancedSets([9, 1, 7, 0, 3, 2], groups: 2) == [[0, 5], [1, 2, 4]])
        #expect(SwiGLUExperts.balancedSets([4, 4, 4, 4], groups: 3) == [[0, 3], [1], [2]])
        for counts in [[5, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1], [100, 3, 3, 3, 90, 0, 2, 2]] {
            for groups in 2...3 {
                let sets = SwiGLUExperts.balancedSets(counts, groups: groups)
                #expect(sets.flatMap { $0 }.sorted() == counts.indices.filter { counts[$0] > 0 })
                #expect(sets.allSatisfy { $0 == $0.sorted() })
            }
        }
    }

    @Test(arguments: [2, 3])
    func aLayerGivesTheSameBitsOnOneAndMoreThreads(threads: Int) {
        let spec = MoESpec(experts: 6, topK: 2, expertHidden: 12, capacityFactor: nil, auxLossCoefficient: 0.01, zLossCoefficient: 0.001)
        let rows = 37, d = 8
        let x = Fixtures.randoms(rows * d, seed: 11), dOut = Fixtures.randoms(rows * d, seed: 12)
        func run(_ t: Int) -> (out: [Float], dx: [Float], gradients: [Float]) {
            let harness = MoEHarness(spec, dModel: d)
            let out = harness.forward(x, rows: rows, threads: KernelThreads(t)).out
            let dx = harness.backward(dOut, gradientScale: 1)
            return (out, dx, Array(harness.parameters.gradients.buffer))
        }
        let one = run(1), many = run(threads)
        #expect(one.out.map(\.bitPattern) == many.out.map(\.bitPattern))
        #expect(one.dx.map(\.bitPattern) == many.dx.map(\.bitPattern))
        #expect(one.gradients.map(\.bitPattern) == many.gradients.map(\.bitPattern))
    }
}
