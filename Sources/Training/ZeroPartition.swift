import Collectives
import Foundation
import Kernels
import Models
import TensorCore

/// The piece of each parameter this rank keeps optimizer state (`parallel.zero` ≥ 1), the
/// reduced gradient (≥ 2) and the values between uses (3, `ShardedParameters`) for.
///
/// Each parameter is sharded over its reduction group, the ranks holding the same copy of it
/// (`ProcessGrid.replicas(ofShardsAlong:)`: the whole world, data × sequence, for a replicated
/// tensor; the replicas of an expert shard for an expert): its flat values are cut into as many
/// contiguous pieces as the group has ranks (the first `count % n` one float longer) and rank i
/// of the group owns piece i. Ownership is per tensor, so it does not depend on the gradient
/// buckets, and each owned piece is a slice of one tensor (one weight-decay flag). Stage 1 sums
/// gradients as stage 0 does; the owners update their pieces and `allGather` copies every piece
/// to every rank of its group, so ranks end a step with bitwise equal parameters.
///
/// Under `parallel.reduction: ordered` (every parameter replicated over one group) rank r owns
/// instead the flat range `flat[r]` of the parameters (`OrderedReduction.slices`: whole chunks
/// of the gradient norm's sum), each entry's piece being its part of that range (maybe empty):
/// the pieces whose gradients rank r sums.
final class ZeroPartition {
    let stage: Int
    let parameters: ParameterSet
    /// Each reduction group's communicator and its entries (indices, in flat order).
    let groups: [(comm: Communicator, entries: [Int])]
    /// Per entry: its group, the flat range this rank owns, and where that piece starts in the
    /// compact (owned-only) buffers.
    let groupOfEntry: [Int]
    let owned: [Range<Int>]
    let compactOffset: [Int]
    /// Floats this rank owns, over all entries.
    let ownedCount: Int
    /// Floats gathered per collective call (the gradient bucket size): bounds the staging copy.
    let chunkFloats: Int
    /// Staging of the gathers (one at a time: on the training thread, or at stage 3 on the
    /// communication thread while the training thread gathers nothing) and of the
    /// reduce-scatters (on one thread), kept from call to call.
    private let gatherStaging = Scratch(), scatterStaging = Scratch()

    /// Flat range owned by each rank of the one group (ordered reduction), nil: per-tensor pieces.
    let flat: [Range<Int>]?

    init(stage: Int, parameters: ParameterSet, grid: ProcessGrid, chunkFloats: Int, flat: [Range<Int>]? = nil) {
        self.stage = stage
        self.parameters = parameters
        self.chunkFloats = max(1, chunkFloats)
        self.flat = flat
        let reduction = ReductionGroups(parameters: parameters, grid: grid)
        precondition(flat == nil || reduction.comms.count == 1 && reduction.comms[0].size == flat!.count,
                     "ZeroPartition: flat ownership needs every parameter in one reduction group of \(flat!.count) ranks")
        var groups = reduction.comms.map { (comm: $0, entries: [Int]()) }
        var owned: [Range<Int>] = [], compactOffset: [Int] = []
        var compact = 0
        for (index, e) in parameters.entries.enumerated() {
            let g = reduction.groupOfEntry[index]
            groups[g].entries.append(index)
            let piece = Self.piece(of: e, ranks: groups[g].comm.size, rank: groups[g].comm.rank, flat: flat)
            owned.append((e.offset + piece.lowerBound)..<(e.offset + piece.upperBound))
            compactOffset.append(compact)
            compact += piece.count
        }
        self.groups = groups; groupOfEntry = reduction.groupOfEntry; self.owned = owned; self.compactOffset = compactOffset
        ownedCount = compact
    }

    /// Rank `rank`'s piece of `entry` (offsets in the tensor) in a group of `ranks`.
    func piece(of entry: ParameterSet.Entry, ranks: Int, rank: Int) -> Range<Int> { Self.piece(of: entry, ranks: ranks, rank: rank, flat: flat) }

    static func piece(of entry: ParameterSet.Entry, ranks: Int, rank: Int, flat: [Range<Int>]?) -> Range<Int> {
        guard let flat else { return piece(count: entry.count, ranks: ranks, rank: rank) }
        let mine = entry.range.clamped(to: flat[rank])
        return (mine.lowerBound - entry.offset)..<(mine.upperBound - entry.offset)
    }

    /// Piece `rank` of `count` floats cut into `ranks` contiguous pieces (offsets in the tensor).
    static func piece(count: Int, ranks: Int, rank: Int) -> Range<Int> {
        let base = count / ranks, extra = count % ranks
        let start = rank * base + min(rank, extra)
        return start..<(start + base + (rank < extra ? 1 : 0))
    }

    /// Bytes per rank held by design: parameters (whole below stage 3; at 3 the owned pieces
    /// and `gatheredFloats`, the other ranks' pieces of the units gathered at once), gradients
    /// (whole below stage 2, the owned pieces from 2) and the two AdamW moments (owned pieces).
    /// `parallel.zero` = 0 is `stateBytes(parameters:)` without a partition.
    func stateBytes(gatheredFloats: Int = 0) -> Int {
        4 * ((stage >= 3 ? ownedCount + gatheredFloats : parameters.count) + (stage >= 2 ? ownedCount : parameters.count) + 2 * ownedCount)
    }

    static func stateBytes(unpartitioned parameters: ParameterSet) -> Int { 4 * 4 * parameters.count }

    // MARK: Gathering owned pieces

    /// Copies every rank's owned pieces into `full` (laid out like the parameters) on every rank
    /// of each group; `mine(entry)` points at this rank's owned piece of that entry (it may lie
    /// inside `full`). Collective over every group, in groups' and entries' order.
    /// `only`: the entries to gather (nil: all).
    func allGather(into full: UnsafeMutablePointer<Float>, only: Set<Int>? = nil, mine: (Int) -> UnsafePointer<Float>) throws {
        for group in groups {
            var chunk: [Int] = [], floats = 0
            for index in group.entries where only?.contains(index) ?? true {
                chunk.append(index)
                floats += parameters.entries[index].count
                if floats >= chunkFloats { try gather(chunk, comm: group.comm, into: full, mine: mine); chunk = []; floats = 0 }
            }
            if !chunk.isEmpty { try gather(chunk, comm: group.comm, into: full, mine: mine) }
        }
    }

    /// The updated parameters (`only`: of these entries): every owner's pieces to every rank.
    func allGatherParameters(only: Set<Int>? = nil) throws {
        let values = parameters.values.pointer
        try allGather(into: values, only: only) { UnsafePointer(values + self.owned[$0].lowerBound) }
    }

    /// Stage 3: drops the whole pages of `entries`' values (nil: all) outside this rank's pieces.
    func releaseParameters(_ entries: [Int]? = nil) {
        for index in entries ?? Array(parameters.entries.indices) {
            Self.release(parameters.values, parameters.entries[index].range, keeping: [owned[index]])
        }
    }

    private func gather(_ chunk: [Int], comm: Communicator, into full: UnsafeMutablePointer<Float>, mine: (Int) -> UnsafePointer<Float>) throws {
        let n = comm.size, entries = parameters.entries
        if n == 1 {
            for index in chunk where mine(index) != UnsafePointer(full + owned[index].lowerBound) {
                (full + owned[index].lowerBound).update(from: mine(index), count: owned[index].count)
            }
            return
        }
        let counts = (0..<n).map { q in chunk.reduce(0) { $0 + piece(of: entries[$1], ranks: n, rank: q).count } }
        let total = counts.reduce(0, +)
        let send = gatherStaging.buffer("send", count: counts[comm.rank]), received = gatherStaging.buffer("received", count: total)
        var at = 0
        for index in chunk { (send + at).update(from: mine(index), count: owned[index].count); at += owned[index].count }
        try comm.allGather(UnsafeRawBufferPointer(start: send, count: counts[comm.rank] * 4), counts: counts.map { $0 * 4 },
                           into: UnsafeMutableRawBufferPointer(start: received, count: total * 4))
        at = 0
        for q in 0..<n {
            for index in chunk {
                let e = entries[index], piece = self.piece(of: e, ranks: n, rank: q)
                (full + e.offset + piece.lowerBound).update(from: received + at, count: piece.count)
                at += piece.count
            }
        }
    }

    // MARK: Stage 2: gradients

    /// Sums the gradients of `range` (one bucket: adjacent entries of group `g`) over the group
    /// and leaves each rank its owned part of it: a reduce-scatter whose block q holds rank q's
    /// pieces of the bucket (blocks padded to the longest). Then the bucket's pages this rank
    /// does not own are given back to the system (`release`).
    func reduceScatter(_ range: Range<Int>, group g: Int) throws {
        let comm = groups[g].comm, n = comm.size
        let entries = parameters.entries(overlapping: range)
        func segments(_ q: Int) -> [Range<Int>] {
            entries.compactMap { e in
                let piece = self.piece(of: e, ranks: n, rank: q)
                let low = max(range.lowerBound, e.offset + piece.lowerBound), high = min(range.upperBound, e.offset + piece.upperBound)
                return low < high ? low..<high : nil
            }
        }
        let blocks = (0..<n).map(segments)
        let block = blocks.map { $0.reduce(0) { $0 + $1.count } }.max() ?? 0
        guard block > 0 else { return }
        let gradients = parameters.gradients.pointer
        // Staging reused from bucket to bucket (no fresh pages to fault in); block padding zeroed.
        let input = scatterStaging.buffer("input", count: n * block), output = scatterStaging.buffer("output", count: block)
        for (q, segments) in blocks.enumerated() {
            var at = q * block
            for s in segments { (input + at).update(from: gradients + s.lowerBound, count: s.count); at += s.count }
            (input + at).update(repeating: 0, count: (q + 1) * block - at)
        }
        try comm.reduceScatter(UnsafeBufferPointer(start: input, count: n * block), into: UnsafeMutableBufferPointer(start: output, count: block), op: .sum)
        var at = 0
        for s in blocks[comm.rank] { (gradients + s.lowerBound).update(from: output + at, count: s.count); at += s.count }
        Self.release(parameters.gradients, range, keeping: blocks[comm.rank])
    }

    /// Drops the whole pages of `buffer` inside `range` outside `kept` (ascending; they read as
    /// zero when next touched): the memory of gradients this rank does not own is returned as
    /// soon as they are summed, that of parameters (stage 3) as soon as a layer is done.
    static func release(_ buffer: FloatBuffer, _ range: Range<Int>, keeping kept: [Range<Int>]) {
        var start = range.lowerBound
        for k in kept + [range.upperBound..<range.upperBound] {
            if k.lowerBound > start { releasePages(buffer, start..<k.lowerBound) }
            start = max(start, k.upperBound)
        }
    }

    /// Zero gradients for a new step: the buffer's whole pages are dropped rather than written
    /// (they read as zero), so pages not owned stay unmapped until the backward pass writes them.
    func clearGradients() {
        let g = parameters.gradients, bytes = Self.pageBytes
        let base = Int(bitPattern: g.pointer), end = base + g.count * 4
        let first = (base + bytes - 1) / bytes * bytes, last = end / bytes * bytes
        guard last > first else { g.zero(); return }
        _ = madvise(UnsafeMutableRawPointer(bitPattern: first), last - first, MADV_DONTNEED)
        g.pointer.update(repeating: 0, count: (first - base) / 4)
        (g.pointer + (last - base) / 4).update(repeating: 0, count: (end - last) / 4)
    }

    static let pageBytes = Int(sysconf(Int32(_SC_PAGESIZE)))

    private static func releasePages(_ buffer: FloatBuffer, _ floats: Range<Int>) {
        let bytes = pageBytes
        let low = Int(bitPattern: buffer.pointer + floats.lowerBound)
        let high = Int(bitPattern: buffer.pointer + floats.upperBound)
        let first = (low + bytes - 1) / bytes * bytes, last = high / bytes * bytes
        guard last > first else { return }
        _ = madvise(UnsafeMutableRawPointer(bitPattern: first), last - first, MADV_DONTNEED)
    }

    /// Σ g² over this rank's owned pieces of the gradients.
    func ownedSquares() -> Double {
        owned.reduce(0.0) { $0 + GradientClipping.sumOfSquares(parameters.gradients.pointer + $1.lowerBound, count: $1.count) }
    }
}
