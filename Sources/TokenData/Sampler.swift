import Foundation
import TensorCore

/// Which samples each step uses: a fresh permutation of all windows every epoch, drawn from
/// (seed, epoch), read in order; global sample p of the run is `permutation(p / count)[p % count]`.
/// A step takes `globalBatch` consecutive global samples; data rank d takes its contiguous
/// slice of them, so ranks never share a sample and no sample repeats within an epoch. The
/// sample at a position depends only on (seed, position), so a resumed run continues exactly.
///
/// Two ways to draw the permutation, both deterministic:
/// - up to `materializedLimit` windows, a Fisher–Yates shuffle of all windows, built once per
///   epoch (the order every run so far has used; existing results depend on it);
/// - above it, a seeded bijection of [0, sampleCount) evaluated per position in O(1) memory: a
///   Feistel network over the next even power of two, keyed by (seed, epoch), with cycle-walking
///   back into range.
public final class Sampler {
    /// Windows up to which the epoch's permutation is materialised: 2^24 windows cost 64 MiB per
    /// process (stored as UInt32) and ~0.1 s per epoch to shuffle, which every rank of a node
    /// pays; at data.seq_len 256 that is already 4.3 G tokens, beyond what a CPU run trains on
    /// in practice, so every corpus used so far keeps its order. Beyond it, memory and shuffle
    /// time would grow with the corpus (2^30 windows: 4 GiB per rank), hence the bijection.
    public static let materializedLimit = 1 << 24

    public let sampleCount: Int
    public let seed: UInt64
    /// This sampler's limit (`Sampler.materializedLimit` unless given).
    public let materializedLimit: Int
    /// Whether epochs are materialised permutations (else the Feistel bijection).
    public var isMaterialized: Bool { sampleCount <= materializedLimit }

    private var cachedEpoch = -1
    private var permutation: [UInt32] = []
    private var feistel: FeistelPermutation?

    public convenience init(sampleCount: Int, seed: UInt64) {
        self.init(sampleCount: sampleCount, seed: seed, materializedLimit: Sampler.materializedLimit)
    }

    /// `materializedLimit` is for tests (to reach the bijection with small counts); it must stay
    /// below 2^32 so materialised entries fit UInt32.
    public init(sampleCount: Int, seed: UInt64, materializedLimit: Int) {
        precondition(sampleCount > 0, "a sampler needs at least one sample")
        precondition(materializedLimit >= 0 && materializedLimit <= Int(UInt32.max), "materializedLimit must be in 0...2^32-1")
        self.sampleCount = sampleCount
        self.seed = seed
        self.materializedLimit = materializedLimit
    }

    /// The window used at global position `position` (0-based, counting every sample the run
    /// has taken across ranks and epochs).
    public func sample(atGlobalPosition position: Int) -> Int {
        precondition(position >= 0, "position \(position) is negative")
        let epoch = position / sampleCount
        if epoch != cachedEpoch {
            var rng = RNG(seed: seed, stream: UInt64(epoch) &+ 0xDA7A)
            if isMaterialized {
                permutation = (0..<sampleCount).map { UInt32($0) }
                for i in stride(from: sampleCount - 1, to: 0, by: -1) { permutation.swapAt(i, rng.nextInt(below: i + 1)) }
            } else {
                feistel = FeistelPermutation(count: sampleCount, rng: &rng)
            }
            cachedEpoch = epoch
        }
        let offset = position % sampleCount
        return isMaterialized ? Int(permutation[offset]) : feistel!.apply(offset)
    }

    /// Sample indices of data rank `rank` (of `ranks`) at a step starting at `samplesSeen`, in
    /// pass order for passes of `microBatch` sequences (nil: one pass, the rank's contiguous
    /// block): pass p takes global positions p·microBatch·ranks + rank·microBatch ..< +
    /// microBatch, so a pass's sequences over all ranks are the same set on any number of ranks.
    public func indices(samplesSeen: Int, globalBatch: Int, rank: Int, ranks: Int, microBatch: Int? = nil) -> [Int] {
        let local = globalBatch / ranks, m = microBatch ?? local
        precondition(m > 0 && local % m == 0, "Sampler: micro-batch \(m) does not divide \(local)")
        return (0..<local).map { sample(atGlobalPosition: samplesSeen + ($0 / m) * m * ranks + rank * m + $0 % m) }
    }
}

/// A keyed bijection of [0, count): a balanced Feistel network over 2^(2·half) ≥ count values
/// (so at most 4·count), applied repeatedly until the value falls below count (cycle-walking;
/// it ends because the value's cycle under the network contains the start, and applies the
/// network fewer than four times on average).
struct FeistelPermutation {
    let count: Int
    let halfBits: Int
    let keys: [UInt64]

    static let rounds = 6

    init(count: Int, rng: inout RNG) {
        precondition(count > 0)
        self.count = count
        var bits = 0
        while bits < 62 && (1 << bits) < count { bits += 1 }
        halfBits = max(1, (bits + 1) / 2)
        keys = (0..<Self.rounds).map { _ in rng.next() }
    }

    func apply(_ index: Int) -> Int {
        precondition(index >= 0 && index < count)
        var value = UInt64(index)
        repeat { value = network(value) } while value >= UInt64(count)
        return Int(value)
    }

    private func network(_ value: UInt64) -> UInt64 {
        let mask: UInt64 = (1 << UInt64(halfBits)) - 1
        var left = value >> UInt64(halfBits), right = value & mask
        for key in keys {
            (left, right) = (right, left ^ (Self.mix(right ^ key) & mask))
        }
        return left << UInt64(halfBits) | right
    }

    /// SplitMix64's finaliser: every input bit affects every output bit.
    private static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
