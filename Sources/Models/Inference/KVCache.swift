import Kernels
import TensorCore

/// Which rank holds which cached positions when a KV cache is sharded over the ranks of a
/// sequence group (docs/ARCHITECTURE.md, "Inference").
///
/// Positions form blocks of `blockSize`; block i belongs to lane i mod `lanes` (the lanes of
/// `LeanAttention`'s reduction tree), and rank r holds the lanes l with l mod `ranks` = r. New
/// positions therefore go round-robin by block, each rank holds about 1/N of the cache (exactly
/// when N divides `lanes`), and each rank's lane partials are complete subtrees of the one
/// reduction tree: any rank count merges to the bits of one rank.
public struct KVShardPlan: Equatable, Sendable, CustomStringConvertible {
    public let blockSize: Int
    public let lanes: Int
    public let rank: Int
    public let ranks: Int

    public init(blockSize: Int = LeanAttention.defaultBlockSize, lanes: Int = LeanAttention.defaultLanes,
                rank: Int = 0, ranks: Int = 1) throws {
        guard blockSize >= 1 else { throw InferenceError.invalidShardPlan("block size \(blockSize) must be at least 1") }
        guard lanes >= 1 else { throw InferenceError.invalidShardPlan("lanes \(lanes) must be at least 1") }
        guard ranks >= 1, (0..<ranks).contains(rank) else {
            throw InferenceError.invalidShardPlan("rank \(rank) is not one of \(ranks) ranks")
        }
        self.blockSize = blockSize; self.lanes = lanes; self.rank = rank; self.ranks = ranks
    }

    /// The lanes rank `r` holds, increasing.
    public func lanes(of r: Int) -> [Int] { Array(stride(from: r, to: lanes, by: ranks)) }
    /// This rank's lanes.
    public var ownedLanes: [Int] { lanes(of: rank) }

    /// The rank that caches `position`.
    public func owner(of position: Int) -> Int { ((position / blockSize) % lanes) % ranks }

    /// How many of the positions 0..<length rank `r` caches.
    public func localLength(of r: Int, length: Int) -> Int {
        let fullRounds = length / (blockSize * lanes)
        var count = fullRounds * lanes(of: r).count * blockSize
        let rest = length - fullRounds * blockSize * lanes   // positions of the last, partial round
        for lane in lanes(of: r) {
            count += max(0, min(blockSize, rest - lane * blockSize))
        }
        return count
    }

    public var description: String { "rank \(rank) of \(ranks), blocks of \(blockSize) positions in \(lanes) lanes" }
}

/// One attention layer's cache of keys (after RoPE) and values for the positions this rank
/// holds, in position order: (Hkv, capacity, D) each, so every head's rows are contiguous for
/// the decode kernel. Capacity doubles as positions arrive, so memory stays O(context).
public final class KVCache {
    public let kvHeads: Int
    public let headDim: Int
    /// Positions held (rows per head).
    public private(set) var length = 0
    public private(set) var capacity: Int
    private(set) var keys: FloatBuffer
    private(set) var values: FloatBuffer

    public init(kvHeads: Int, headDim: Int, initialCapacity: Int = 64) {
        self.kvHeads = kvHeads
        self.headDim = headDim
        capacity = max(1, initialCapacity)
        keys = FloatBuffer(count: kvHeads * capacity * headDim)
        values = FloatBuffer(count: kvHeads * capacity * headDim)
    }

    public var keyPointer: UnsafePointer<Float> { UnsafePointer(keys.pointer) }
    public var valuePointer: UnsafePointer<Float> { UnsafePointer(values.pointer) }

    /// Bytes allocated for keys and values.
    public var bytes: Int { 2 * kvHeads * capacity * headDim * MemoryLayout<Float>.size }

    /// Makes room for `rows` positions in all.
    public func reserve(_ rows: Int) {
        guard rows > capacity else { return }
        var grown = capacity
        while grown < rows { grown *= 2 }
        let (k, v) = (FloatBuffer(count: kvHeads * grown * headDim), FloatBuffer(count: kvHeads * grown * headDim))
        for h in 0..<kvHeads {
            (k.pointer + h * grown * headDim).update(from: keys.pointer + h * capacity * headDim, count: length * headDim)
            (v.pointer + h * grown * headDim).update(from: values.pointer + h * capacity * headDim, count: length * headDim)
        }
        keys = k; values = v; capacity = grown
    }

    /// Appends one position: `key` and `value` are (Hkv, D) rows as the projections write them.
    public func append(key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        reserve(length + 1)
        for h in 0..<kvHeads {
            (keys.pointer + (h * capacity + length) * headDim).update(from: key + h * headDim, count: headDim)
            (values.pointer + (h * capacity + length) * headDim).update(from: value + h * headDim, count: headDim)
        }
        length += 1
    }

    /// Forgets every position (the memory is kept).
    public func removeAll() { length = 0 }
}
