import Foundation
import TensorCore

/// Which samples each step uses: a fresh permutation of all windows every epoch, drawn from
/// (seed, epoch), read in order; global sample p of the run is `permutation(p / count)[p % count]`.
/// A step takes `globalBatch` consecutive global samples; data rank d takes its contiguous
/// slice of them, so ranks never share a sample and no sample repeats within an epoch.
public final class Sampler {
    public let sampleCount: Int
    public let seed: UInt64
    private var cachedEpoch = -1
    private var permutation: [Int] = []

    public init(sampleCount: Int, seed: UInt64) {
        self.sampleCount = sampleCount
        self.seed = seed
    }

    public func sample(atGlobalPosition position: Int) -> Int {
        let epoch = position / sampleCount
        if epoch != cachedEpoch {
            var rng = RNG(seed: seed, stream: UInt64(epoch) &+ 0xDA7A)
            permutation = Array(0..<sampleCount)
            for i in stride(from: sampleCount - 1, to: 0, by: -1) { permutation.swapAt(i, rng.nextInt(below: i + 1)) }
            cachedEpoch = epoch
        }
        return permutation[position % sampleCount]
    }

    /// Sample indices of data rank `rank` (of `ranks`) at a step starting at `samplesSeen`.
    public func indices(samplesSeen: Int, globalBatch: Int, rank: Int, ranks: Int) -> [Int] {
        let local = globalBatch / ranks
        return (0..<local).map { sample(atGlobalPosition: samplesSeen + rank * local + $0) }
    }
}
