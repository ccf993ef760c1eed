import Foundation

/// N ranks as threads of one process, for unit tests of parallel algorithms.
///
/// Ranks meet on a shared board: each collective posts this rank's buffers, waits until every
/// rank has posted (or the deadline passes, naming the ranks that never came), reads what it
/// needs straight from the others' memory, and waits once more so no buffer is reused while a
/// peer still reads it. Reductions combine contributions in rank order, so every rank computes
/// the same bits.
public final class InProcessCommunicator: Communicator {
    public let rank: Int
    public var size: Int { board.size }
    public let backendName = "inprocess"
    public var timeoutSeconds: Double { board.timeoutSeconds }
    private let board: InProcessBoard

    init(rank: Int, board: InProcessBoard) {
        self.rank = rank
        self.board = board
    }

    /// Runs `body` on `size` threads, one per rank, and returns each rank's result (or error).
    public static func run<T>(size: Int, timeoutSeconds: Double = 30,
                              _ body: @escaping (InProcessCommunicator) throws -> T) -> [Result<T, Error>] {
        let board = InProcessBoard(size: size, timeoutSeconds: timeoutSeconds)
        let results = ResultBox<T>(size: size)
        let lock = NSLock()
        let group = DispatchGroup()
        for r in 0..<size {
            group.enter()
            let thread = Thread {
                let result = Result { try body(InProcessCommunicator(rank: r, board: board)) }
                lock.lock(); results.values[r] = result; lock.unlock()
                group.leave()
            }
            thread.stackSize = 16 << 20
            thread.start()
        }
        group.wait()
        return results.values.map { $0! }
    }

    // MARK: Collectives

    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws {
        let n = buffer.count
        try board.meet(rank, "allReduce(\(op.rawValue), \(n) floats)", post: UnsafeRawPointer(buffer.baseAddress), n) { posts in
            guard posts.allSatisfy({ $0.count == n }) else {
                throw CollectiveError.invalidArgument("allReduce: ranks passed different lengths \(posts.map(\.count))")
            }
            guard n > 0 else { return nil }
            var sum = [Float](repeating: 0, count: n)
            sum.withUnsafeMutableBufferPointer { acc in
                acc.baseAddress!.update(from: posts[0].floats, count: n)
                for r in 1..<size { op.combine(into: acc.baseAddress!, from: posts[r].floats, count: n) }
                op.finish(acc.baseAddress!, count: n, size: size)
            }
            return { sum.withUnsafeBufferPointer { buffer.baseAddress!.update(from: $0.baseAddress!, count: n) } }
        }
    }

    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        try checkPeer(root, "broadcast")
        try board.meet(rank, "broadcast(root: \(root))", post: UnsafeRawPointer(buffer.baseAddress), buffer.count) { posts in
            guard posts[root].count == buffer.count else {
                throw CollectiveError.invalidArgument("broadcast: root has \(posts[root].count) B, rank \(rank) \(buffer.count) B")
            }
            if rank != root, buffer.count > 0 { buffer.baseAddress!.copyMemory(from: posts[root].pointer!, byteCount: buffer.count) }
            return nil
        }
    }

    public func allGather(_ input: UnsafeRawBufferPointer, counts: [Int], into output: UnsafeMutableRawBufferPointer) throws {
        try checkAllGather(input, counts: counts, output)
        try board.meet(rank, "allGather", post: input.baseAddress, input.count) { posts in
            var offset = 0
            for r in 0..<size {
                guard posts[r].count == counts[r] else {
                    throw CollectiveError.invalidArgument("allGather: rank \(r) sent \(posts[r].count) B, counts say \(counts[r])")
                }
                if counts[r] > 0 { (output.baseAddress! + offset).copyMemory(from: posts[r].pointer!, byteCount: counts[r]) }
                offset += counts[r]
            }
            return nil
        }
    }

    public func reduceScatter(_ input: UnsafeBufferPointer<Float>, into output: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws {
        let n = output.count
        try checkReduceScatter(input, output)
        try board.meet(rank, "reduceScatter(\(op.rawValue))", post: UnsafeRawPointer(input.baseAddress), input.count) { posts in
            guard n > 0 else { return nil }
            let out = output.baseAddress!
            out.update(from: posts[0].floats + rank * n, count: n)
            for r in 1..<size { op.combine(into: out, from: posts[r].floats + rank * n, count: n) }
            op.finish(out, count: n, size: size)
            return nil
        }
    }

    public func allToAll(_ input: UnsafeRawBufferPointer, sendCounts: [Int],
                         into output: UnsafeMutableRawBufferPointer, receiveCounts: [Int]) throws {
        try checkAllToAll(input, sendCounts: sendCounts, output, receiveCounts: receiveCounts)
        try sendCounts.withUnsafeBufferPointer { countsPointer in
            try board.meet(rank, "allToAll", post: input.baseAddress, input.count,
                           extra: UnsafeRawPointer(countsPointer.baseAddress)) { posts in
                var offset = 0
                for r in 0..<size {
                    let theirCounts = posts[r].extra!.assumingMemoryBound(to: Int.self)
                    guard theirCounts[rank] == receiveCounts[r] else {
                        throw CollectiveError.invalidArgument("allToAll: rank \(r) sends \(theirCounts[rank]) B to rank \(rank), which expects \(receiveCounts[r]) B")
                    }
                    var theirOffset = 0
                    for q in 0..<rank { theirOffset += theirCounts[q] }
                    if receiveCounts[r] > 0 {
                        (output.baseAddress! + offset).copyMemory(from: posts[r].pointer! + theirOffset, byteCount: receiveCounts[r])
                    }
                    offset += receiveCounts[r]
                }
                return nil
            }
        }
    }

    public func send(_ buffer: UnsafeRawBufferPointer, to destination: Int, tag: Int) throws {
        try checkPeer(destination, "send")
        board.post(Array(buffer.bindMemory(to: UInt8.self)), from: rank, to: destination, tag: tag)
    }

    public func receive(_ buffer: UnsafeMutableRawBufferPointer, from source: Int, tag: Int) throws {
        try checkPeer(source, "receive")
        let message = try board.take(from: source, to: rank, tag: tag)
        guard message.count == buffer.count else {
            throw CollectiveError.invalidArgument("receive(from: \(source), tag: \(tag)): message has \(message.count) B, buffer \(buffer.count) B")
        }
        message.withUnsafeBytes { buffer.copyMemory(from: $0) }
    }

    public func barrier() throws {
        try board.meet(rank, "barrier", post: nil, 0) { _ in nil }
    }

    public func split(color: Int, key: Int) throws -> Communicator {
        let colors = try allGather(Int64(color)), keys = try allGather(Int64(key))
        let members = (0..<size).filter { colors[$0] == Int64(color) }.sorted { (keys[$0], $0) < (keys[$1], $1) }
        let child = board.child(color: color, size: members.count)
        try barrier()  // every member has looked up the same child before the next split
        return InProcessCommunicator(rank: members.firstIndex(of: rank)!, board: child)
    }
}

/// One rank's contribution to a meeting: a pointer and a count (bytes or floats).
struct Post {
    var pointer: UnsafeRawPointer?
    var count: Int
    var extra: UnsafeRawPointer?
    var floats: UnsafePointer<Float> { pointer!.assumingMemoryBound(to: Float.self) }
}

/// The shared meeting place of an in-process group.
final class InProcessBoard {
    let size: Int
    let timeoutSeconds: Double
    private let condition = NSCondition()
    private var posts: [Post?]
    private var arrived = Set<Int>()
    /// Ranks that timed out: they came, so they are not reported as missing by the others.
    private var gaveUp = Set<Int>()
    private var operations: [String?]
    private var generation = 0
    private var published: [Post] = []
    private var mailboxes: [String: [[UInt8]]] = [:]
    private var children: [String: InProcessBoard] = [:]

    init(size: Int, timeoutSeconds: Double) {
        self.size = size
        self.timeoutSeconds = timeoutSeconds
        posts = [Post?](repeating: nil, count: size)
        operations = [String?](repeating: nil, count: size)
    }

    /// Posts, waits for everyone, runs `read` on the posts; `read` may return a write to apply
    /// after the second meeting (when no peer reads this rank's buffer any more).
    func meet(_ rank: Int, _ operation: String, post pointer: UnsafeRawPointer?, _ count: Int,
              extra: UnsafeRawPointer? = nil, read: ([Post]) throws -> (() -> Void)?) throws {
        let all = try gather(rank, operation, Post(pointer: pointer, count: count, extra: extra))
        var failure: Error?
        var write: (() -> Void)?
        do { write = try read(all) } catch { failure = error }
        _ = try gather(rank, operation + " (completion)", Post(pointer: nil, count: 0))
        if let failure { throw failure }
        write?()
    }

    private func gather(_ rank: Int, _ operation: String, _ post: Post) throws -> [Post] {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date(timeIntervalSinceNow: timeoutSeconds)
        let myGeneration = generation
        posts[rank] = post
        operations[rank] = operation
        arrived.insert(rank)
        if arrived.count == size {
            published = posts.map { $0! }
            arrived.removeAll()
            generation += 1
            condition.broadcast()
            return published
        }
        while generation == myGeneration {
            if !condition.wait(until: deadline) && generation == myGeneration {
                arrived.remove(rank)
                gaveUp.insert(rank)
                let missing = (0..<size).filter { !arrived.contains($0) && !gaveUp.contains($0) }
                throw CollectiveError.timeout(operation: operation, waitingFor: missing, seconds: timeoutSeconds)
            }
        }
        return published
    }

    func post(_ message: [UInt8], from source: Int, to destination: Int, tag: Int) {
        condition.lock()
        mailboxes["\(source)>\(destination)#\(tag)", default: []].append(message)
        condition.broadcast()
        condition.unlock()
    }

    func take(from source: Int, to destination: Int, tag: Int) throws -> [UInt8] {
        condition.lock()
        defer { condition.unlock() }
        let key = "\(source)>\(destination)#\(tag)"
        let deadline = Date(timeIntervalSinceNow: timeoutSeconds)
        while mailboxes[key, default: []].isEmpty {
            if !condition.wait(until: deadline) && mailboxes[key, default: []].isEmpty {
                throw CollectiveError.timeout(operation: "receive(from: \(source), tag: \(tag))", waitingFor: [source], seconds: timeoutSeconds)
            }
        }
        return mailboxes[key]!.removeFirst()
    }

    /// The board of one colour of the current split, created by whichever member asks first.
    /// Every member asks between the same two meetings, so `generation` names the split.
    func child(color: Int, size childSize: Int) -> InProcessBoard {
        condition.lock()
        defer { condition.unlock() }
        let key = "\(generation)/\(color)"
        if let existing = children[key] { return existing }
        let board = InProcessBoard(size: childSize, timeoutSeconds: timeoutSeconds)
        children[key] = board
        return board
    }
}

private final class ResultBox<T> {
    var values: [Result<T, Error>?]
    init(size: Int) { values = [Result<T, Error>?](repeating: nil, count: size) }
}
