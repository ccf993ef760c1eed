import Collectives
import Kernels
import TensorCore

/// Decode attention of one query token over a KV cache sharded by `KVShardPlan`: each rank
/// computes the lane partials (o, lse) of the positions it holds with `LeanAttention`, the ranks
/// exchange them in one allGather (a few KiB per layer, independent of the context length),
/// and every rank merges them in the reduction tree's fixed order, so every rank, and every
/// rank count, gets the bits one rank gets. The block kernel's instruction sets differ in their
/// last bits, so on the first exchange the ranks agree on the narrowest one any of them has
/// (a job over hosts with and without AVX-512 runs AVX2 everywhere).
public final class ShardedDecodeAttention {
    public private(set) var kernel: LeanAttention
    public let plan: KVShardPlan
    private let records: FloatBuffer   // this rank's lane records (Hq, c, D + 1)
    private let placed: FloatBuffer    // every lane's record (Hq, lanes, D + 1)
    private var send: [Float] = []
    private var gathered: [Float] = []
    private var agreedOnKernel = false

    /// Batch 1: `heads` query heads over `kvHeads` cached heads of `headDim`; `isa` the block
    /// kernel this rank offers (the process's widest unless given).
    public init(heads: Int, kvHeads: Int, headDim: Int, plan: KVShardPlan, isa: TesseraGemm.ISA = TesseraGemm.isa) {
        kernel = LeanAttention(batch: 1, heads: heads, kvHeads: kvHeads, headDim: headDim, blockSize: plan.blockSize, lanes: plan.lanes,
                               isa: isa)
        self.plan = plan
        records = FloatBuffer(count: heads * max(1, plan.ownedLanes.count) * (headDim + 1))
        placed = FloatBuffer(count: heads * plan.lanes * (headDim + 1))
    }

    /// o (Hq, D) for the query q (Hq, D) against `cache` (this rank's positions) when the
    /// whole sequence holds `length` positions. `communicator` joins the ranks of the plan
    /// (nil on one rank); every rank must call this with the same `length`.
    public func attend(q: UnsafePointer<Float>, cache: KVCache, length: Int, communicator: Communicator?,
                       o: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>? = nil, threads: KernelThreads = .single) throws {
        var peers: Communicator?
        if plan.ranks > 1 {
            guard let communicator, communicator.size == plan.ranks, communicator.rank == plan.rank else {
                throw InferenceError.invalidShardPlan("\(plan) needs a communicator of \(plan.ranks) ranks with this rank at \(plan.rank)")
            }
            if !agreedOnKernel { try agreeOnKernel(communicator) }
            peers = communicator
        }
        let heads = kernel.heads, D = kernel.headDim, size = kernel.recordSize, lanes = plan.lanes
        let owned = plan.ownedLanes
        if !owned.isEmpty {
            kernel.lanePartials(q: q, k: cache.keyPointer, v: cache.valuePointer, length: cache.length, capacity: cache.capacity,
                                ownedLanes: owned, records: records.pointer, threads: threads)
        }
        if let peers {
            try exchange(length: length, communicator: peers)
        } else {
            placed.pointer.update(from: records.pointer, count: heads * lanes * size)
        }
        for h in 0..<heads {
            LeanAttention.foldLanes(placed.pointer + h * lanes * size, count: lanes, headDim: D, o: o + h * D, lse: lse.map { $0 + h })
        }
    }

    /// Every rank switches to the narrowest block kernel any rank runs (ISA cases go widest first).
    private func agreeOnKernel(_ communicator: Communicator) throws {
        let order = TesseraGemm.ISA.allCases
        let levels = try communicator.allGather(Int64(order.firstIndex(of: kernel.isa)!))
        guard let narrowest = levels.max(), (0..<Int64(order.count)).contains(narrowest) else {
            throw InferenceError.invalidShardPlan("ranks reported decode kernels \(levels): expected indices below \(order.count)")
        }
        let isa = order[Int(narrowest)]
        if isa != kernel.isa {
            kernel = LeanAttention(batch: 1, heads: kernel.heads, kvHeads: kernel.kvHeads, headDim: kernel.headDim,
                                   blockSize: kernel.blockSize, lanes: kernel.lanes, isa: isa)
        }
        agreedOnKernel = true
    }

    /// Fills `placed` with every rank's records: only lanes that hold a block anywhere travel
    /// (a prefix of each rank's lanes); the others are the empty partial.
    private func exchange(length: Int, communicator: Communicator) throws {
        let heads = kernel.heads, size = kernel.recordSize, lanes = plan.lanes
        let active = min(lanes, kernel.blockCount(length: length))
        let activePerRank = (0..<plan.ranks).map { r in plan.lanes(of: r).filter { $0 < active }.count }
        let mine = activePerRank[plan.rank], c = plan.ownedLanes.count
        send.removeAll(keepingCapacity: true)
        for h in 0..<heads {
            let row = records.pointer + h * c * size
            send.append(contentsOf: UnsafeBufferPointer(start: row, count: mine * size))
        }
        let counts = activePerRank.map { heads * $0 * size }
        let total = counts.reduce(0, +)
        if gathered.count != total { gathered = [Float](repeating: 0, count: total) }
        try send.withUnsafeBytes { input in
            try gathered.withUnsafeMutableBytes { output in
                try communicator.allGather(input, counts: counts.map { $0 * MemoryLayout<Float>.size }, into: output)
            }
        }
        for i in 0..<(heads * lanes) { LeanAttention.setEmpty(placed.pointer + i * size, headDim: kernel.headDim) }
        gathered.withUnsafeBufferPointer { all in
            var offset = 0
            for r in 0..<plan.ranks {
                let lanesOfR = plan.lanes(of: r), n = activePerRank[r]
                for h in 0..<heads {
                    for i in 0..<n {
                        (placed.pointer + (h * lanes + lanesOfR[i]) * size)
                            .update(from: all.baseAddress! + offset + (h * n + i) * size, count: size)
                    }
                }
                offset += counts[r]
            }
        }
    }
}
