import Testing
import Foundation
import TensorCore
import Training
import _TestSupport

/// Samplers in both modes: the materialised Fisher–Yates permutation (small corpora) and the
/// keyed Feistel bijection (corpora above `materializedLimit`, forced here with a small limit).
@Suite struct SamplerTests {
    /// Materialised with the default limit, or the bijection with limit 0.
    static func sampler(_ count: Int, seed: UInt64 = 9, bijection: Bool) -> Sampler {
        bijection ? Sampler(sampleCount: count, seed: seed, materializedLimit: 0) : Sampler(sampleCount: count, seed: seed)
    }

    static func epoch(_ sampler: Sampler, _ epoch: Int) -> [Int] {
        (0..<sampler.sampleCount).map { sampler.sample(atGlobalPosition: epoch * sampler.sampleCount + $0) }
    }

    @Test func smallCorporaKeepTheFisherYatesOrder() {
        // The order runs so far were trained with: pinned so the bijection never replaces it.
        let sampler = Sampler(sampleCount: 50, seed: 7)
        #expect(sampler.isMaterialized && Sampler.materializedLimit == 1 << 24)
        for epoch in 0..<2 {
            var rng = RNG(seed: 7, stream: UInt64(epoch) &+ 0xDA7A)
            var expected = Array(0..<50)
            for i in stride(from: 49, to: 0, by: -1) { expected.swapAt(i, rng.nextInt(below: i + 1)) }
            #expect(Self.epoch(sampler, epoch) == expected)
        }
        #expect(!Sampler(sampleCount: 51, seed: 7, materializedLimit: 50).isMaterialized)
        #expect(Sampler(sampleCount: 50, seed: 7, materializedLimit: 50).isMaterialized)
    }

    @Test(arguments: [1, 2, 3, 7, 64, 1000, 4097, 65_537])
    func theBijectionIsAPermutation(count: Int) {
        let sampler = Self.sampler(count, bijection: true)
        #expect(!sampler.isMaterialized)
        for epoch in 0..<2 {
            var seen = [Bool](repeating: false, count: count)
            for index in Self.epoch(sampler, epoch) {
                #expect(index >= 0 && index < count && !seen[index])
                seen[index] = true
            }
            #expect(!seen.contains(false))
        }
    }

    @Test func theBijectionDiffersBetweenEpochsAndSeeds() {
        let a = Self.sampler(1000, seed: 1, bijection: true), b = Self.sampler(1000, seed: 2, bijection: true)
        let first = Self.epoch(a, 0)
        #expect(first != Self.epoch(a, 1))
        #expect(first != Self.epoch(b, 0))
        #expect(first != Array(0..<1000), "it shuffles")
        // Not merely shifted: few positions keep their neighbour.
        let adjacent = zip(first, first.dropFirst()).filter { $1 == $0 + 1 }.count
        #expect(adjacent < 20)
        // And it is a function of (seed, position) alone.
        #expect(first == Self.epoch(Self.sampler(1000, seed: 1, bijection: true), 0))
    }

    /// Two data ranks take disjoint samples that together cover each epoch exactly once.
    @Test(arguments: [false, true])
    func twoRanksCoverAnEpochOnceWithoutSharing(bijection: Bool) {
        let count = 60, globalBatch = 6
        let sampler = Self.sampler(count, bijection: bijection)
        for epoch in 0..<2 {
            var seen: [Int] = []
            for step in 0..<(count / globalBatch) {
                let samplesSeen = (epoch * count / globalBatch + step) * globalBatch
                let slices = (0..<2).map { sampler.indices(samplesSeen: samplesSeen, globalBatch: globalBatch, rank: $0, ranks: 2) }
                #expect(slices.allSatisfy { $0.count == 3 })
                #expect(Set(slices[0]).isDisjoint(with: slices[1]))
                seen += slices.flatMap { $0 }
            }
            #expect(seen.count == count && Set(seen) == Set(0..<count), "epoch \(epoch)")
        }
    }

    /// Resuming at a position gives what an uninterrupted run takes there, including steps that
    /// cross an epoch boundary (50 windows, 8 per step).
    @Test(arguments: [false, true])
    func resumingAtAPositionMatchesAnUninterruptedRun(bijection: Bool) {
        let count = 50, globalBatch = 8, ranks = 2
        let straight = Self.sampler(count, bijection: bijection)
        let reference = (0..<20).map { step in
            (0..<ranks).map { straight.indices(samplesSeen: step * globalBatch, globalBatch: globalBatch, rank: $0, ranks: ranks) }
        }
        for resumeStep in [0, 3, 6, 7, 13] {
            let resumed = Self.sampler(count, bijection: bijection)
            for step in resumeStep..<20 {
                for rank in 0..<ranks {
                    #expect(resumed.indices(samplesSeen: step * globalBatch, globalBatch: globalBatch, rank: rank, ranks: ranks)
                            == reference[step][rank], "resumed at step \(resumeStep), step \(step), rank \(rank)")
                }
            }
        }
    }
}
