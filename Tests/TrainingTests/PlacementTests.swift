import Testing
import Collectives
import Foundation
import Kernels
import Models
import Training
import _TestSupport

/// Gradient reduction and the clipping norm read each parameter's placement: a replicated
/// tensor is summed over every rank and counted once in the norm; an expert-sharded one is
/// summed only over the ranks holding the same shard and counted once per shard.
@Suite struct PlacementTests {
    /// A replicated vector of 5 and an expert-sharded matrix whose global shape is [2·E, 3].
    static func parameters(expertIndex: Int, experts: Int) -> ParameterSet {
        ParameterSet([
            ParameterDeclaration("shared.weight", [5], .ones),
            ParameterDeclaration("experts.weight", [2, 3], .zeros,
                                 placement: .sharded(axis: .expert, globalShape: [2 * experts, 3], offset: [2 * expertIndex, 0])),
            ParameterDeclaration("tail.weight", [4], .ones),
        ])
    }

    /// A gradient that depends on the rank, so sums show who took part.
    static func fill(_ p: ParameterSet, rank: Int) {
        for i in 0..<p.count { p.gradients[i] = Float(rank + 1) * Float(i + 1) }
    }

    @Test(arguments: [false, true])
    func gradientsAreSummedOverTheRanksHoldingTheSameCopy(overlap: Bool) throws {
        // data 4 = 2 replicas × expert 2: ranks 0 and 2 hold expert shard 0, ranks 1 and 3 shard 1.
        let results = InProcessCommunicator.run(size: 4) { comm -> [Float] in
            let grid = try ProcessGrid(world: comm, layout: GridLayout(data: 4, expert: 2))
            let p = Self.parameters(expertIndex: grid.index(along: .expert), experts: 2)
            Self.fill(p, rank: comm.rank)
            let reducer = GradientReducer(parameters: p, grid: grid, bucketBytes: 8, overlap: overlap)
            reducer.ready(p.entry("tail.weight").range)
            reducer.ready(p.entry("experts.weight").range)
            reducer.ready(p.entry("shared.weight").range)
            try reducer.finish()
            return p.gradients.array
        }
        for (rank, result) in results.enumerated() {
            let g = try result.get()
            let sameShard = rank % 2 == 0 ? [0, 2] : [1, 3]
            for i in 0..<15 {
                let ranks = (5..<11).contains(i) ? sameShard : [0, 1, 2, 3]
                #expect(g[i] == Float(ranks.reduce(0) { $0 + $1 + 1 }) * Float(i + 1), "rank \(rank), element \(i)")
            }
        }
    }

    @Test func theClippingNormCountsReplicatedTensorsOnceAndEachShardOnce() throws {
        let results = InProcessCommunicator.run(size: 2) { comm -> Double in
            let grid = try ProcessGrid(world: comm, layout: GridLayout(data: 2, expert: 2))
            let p = Self.parameters(expertIndex: grid.index(along: .expert), experts: 2)
            for i in 0..<p.count { p.gradients[i] = 1 }                       // replicated parts agree
            for i in p.entry("experts.weight").range { p.gradients[i] = Float(comm.rank + 2) }  // shards differ
            return try GradientNorm.global(p, grid: grid)
        }
        // 9 replicated ones, then shard 0 (six 2s) and shard 1 (six 3s), each counted once.
        let expected = (9.0 + 6 * 4 + 6 * 9).squareRoot()
        for result in results { #expect(abs(try result.get() - expected) < 1e-9) }
    }

    @Test func oneRankWithEveryParameterReplicatedIsThePlainNorm() throws {
        let p = Self.parameters(expertIndex: 0, experts: 1)
        Self.fill(p, rank: 0)
        let grid = try ProcessGrid(world: SingleProcessCommunicator(), data: 1)
        let plain = GradientClipping.sumOfSquares(p.gradients.pointer, count: p.count).squareRoot()
        #expect(try GradientNorm.global(p, grid: grid) == plain)
    }
}
