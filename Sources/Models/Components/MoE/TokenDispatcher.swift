import Collectives
import Dispatch

/// Moves the rows of admitted (token, expert) pairs to the ranks holding their experts and back
/// (an all-to-all token dispatcher as in Megatron-core, dropless as in MegaBlocks: no padding).
///
/// `plan` orders this rank's admitted pairs by global expert (token order within an expert),
/// so the rows for each destination rank are consecutive, and exchanges the counts first: each
/// rank learns how many rows every source sends to each of its local experts. `dispatch` sends
/// rows in that order with a variable-count all-to-all over the expert communicator and
/// regroups what arrives (source by source) into one block per local expert (each holding
/// source 0's rows, then source 1's, ...). `combine` is the exact reverse, and so is the
/// backward pass of each. Every rank makes the same calls whatever its counts, zeros included.
final class TokenDispatcher {
    /// Wall time spent in this dispatcher's all-to-all exchanges (counts and rows, forward and
    /// backward), waiting for peers included: what `tessera bench train` reports as the
    /// all-to-all share of a step.
    private(set) var exchangeSeconds: Double = 0

    /// Runs `body`, adding its wall time to `exchangeSeconds`.
    private func timed<T>(_ body: () throws -> T) rethrows -> T {
        let start = DispatchTime.now().uptimeNanoseconds
        defer { exchangeSeconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        return try body()
    }

    let experts: Int
    let sharding: ExpertSharding
    /// Pair index (token · k + choice) of each row this rank sends, grouped by global expert.
    private(set) var order: [Int] = []
    /// Rows this rank sends to each global expert.
    private(set) var sent: [Int] = []
    /// Rows each source rank sends to each local expert (sources × local experts, row-major).
    private(set) var received: [Int] = []

    init(experts: Int, sharding: ExpertSharding) {
        self.experts = experts
        self.sharding = sharding
    }

    var localExperts: Int { experts / sharding.count }
    var sentRows: Int { order.count }
    var receivedRows: Int { received.reduce(0, +) }

    /// Rows of each local expert, every source together.
    var rowsPerLocalExpert: [Int] {
        (0..<localExperts).map { l in stride(from: l, to: received.count, by: localExperts).reduce(0) { $0 + received[$1] } }
    }

    /// Orders the admitted pairs and exchanges the counts. Collective over `comm` (the expert
    /// axis; nil or one rank: every expert is here).
    func plan(choices: [Int], admitted: [Bool], comm: Communicator?) throws {
        var count = [Int](repeating: 0, count: experts)
        for (pair, e) in choices.enumerated() where admitted[pair] { count[e] += 1 }
        var next = [Int](repeating: 0, count: experts)
        for e in 1..<max(experts, 1) { next[e] = next[e - 1] + count[e - 1] }
        var order = [Int](repeating: 0, count: count.reduce(0, +))
        for (pair, e) in choices.enumerated() where admitted[pair] {
            order[next[e]] = pair
            next[e] += 1
        }
        self.order = order
        sent = count
        guard let comm, comm.size > 1 else { received = count; return }
        precondition(comm.size == sharding.count, "TokenDispatcher: expert communicator of \(comm.size) ranks for \(sharding.count) shards")
        var counts = count.map(Int64.init), incoming = [Int64](repeating: 0, count: experts)
        let block = [Int](repeating: localExperts * 8, count: comm.size)
        try timed {
            try counts.withUnsafeBytes { input in
                try incoming.withUnsafeMutableBytes { try comm.allToAll(input, sendCounts: block, into: $0, receiveCounts: block) }
            }
        }
        received = incoming.map(Int.init)
    }

    /// Whether rows move between ranks over `comm`. Without (nil or one rank) the rows in
    /// `order` already are the experts' rows by local expert: the caller uses them in place
    /// and calls neither `dispatch` nor `combine`.
    static func exchanges(over comm: Communicator?) -> Bool { (comm?.size ?? 1) > 1 }

    /// rows (sentRows × width, in `order`) → out (receivedRows × width, by local expert).
    /// `staging` holds receivedRows × width floats. Collective over `comm` (several ranks).
    func dispatch(_ rows: UnsafePointer<Float>, width: Int, into out: UnsafeMutablePointer<Float>,
                  staging: UnsafeMutablePointer<Float>, comm: Communicator) throws {
        try exchange(rows, sendRows: perDestination(sent), into: staging, receiveRows: perSource(), width: width, comm: comm)
        regroup(staging, into: out, width: width, toExpertMajor: true)
    }

    /// The reverse of `dispatch`: rows (receivedRows × width, by local expert) → out
    /// (sentRows × width, in `order`). `staging` holds receivedRows × width floats.
    func combine(_ rows: UnsafePointer<Float>, width: Int, into out: UnsafeMutablePointer<Float>,
                 staging: UnsafeMutablePointer<Float>, comm: Communicator) throws {
        regroup(rows, into: staging, width: width, toExpertMajor: false)
        try exchange(staging, sendRows: perSource(), into: out, receiveRows: perDestination(sent), width: width, comm: comm)
    }

    /// Rows per destination rank of per-global-expert counts.
    private func perDestination(_ counts: [Int]) -> [Int] {
        (0..<sharding.count).map { s in counts[(s * localExperts)..<((s + 1) * localExperts)].reduce(0, +) }
    }

    /// Rows received from each source rank.
    private func perSource() -> [Int] {
        (0..<sharding.count).map { r in received[(r * localExperts)..<((r + 1) * localExperts)].reduce(0, +) }
    }

    private func exchange(_ input: UnsafePointer<Float>, sendRows: [Int], into output: UnsafeMutablePointer<Float>,
                          receiveRows: [Int], width: Int, comm: Communicator) throws {
        let bytes = 4 * width
        try timed {
        try comm.allToAll(UnsafeRawBufferPointer(start: input, count: sendRows.reduce(0, +) * bytes), sendCounts: sendRows.map { $0 * bytes },
                          into: UnsafeMutableRawBufferPointer(start: output, count: receiveRows.reduce(0, +) * bytes),
                          receiveCounts: receiveRows.map { $0 * bytes })
        }
    }

    /// Source-major (source, local expert) blocks ⇄ expert-major (local expert, source) blocks.
    private func regroup(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, width: Int, toExpertMajor: Bool) {
        let (sources, local) = (sharding.count, localExperts)
        var sourceMajor = [Int](repeating: 0, count: sources * local), expertMajor = sourceMajor
        var offset = 0
        for r in 0..<sources { for l in 0..<local { sourceMajor[r * local + l] = offset; offset += received[r * local + l] } }
        offset = 0
        for l in 0..<local { for r in 0..<sources { expertMajor[r * local + l] = offset; offset += received[r * local + l] } }
        for block in 0..<(sources * local) where received[block] > 0 {
            let (from, to) = toExpertMajor ? (sourceMajor[block], expertMajor[block]) : (expertMajor[block], sourceMajor[block])
            (output + to * width).update(from: input + from * width, count: received[block] * width)
        }
    }
}
