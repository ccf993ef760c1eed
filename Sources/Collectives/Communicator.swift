import Foundation

/// How `allReduce` and `reduceScatter` combine the ranks' values.
public enum ReduceOp: String, CaseIterable, Sendable {
    case sum, average, max, min

    /// `target[i] = target[i] ⊕ source[i]`; `average` accumulates a sum (divide with `finish`).
    @inline(__always)
    public func combine(into target: UnsafeMutablePointer<Float>, from source: UnsafePointer<Float>, count: Int) {
        switch self {
        case .sum, .average: for i in 0..<count { target[i] += source[i] }
        case .max: for i in 0..<count { target[i] = Swift.max(target[i], source[i]) }
        case .min: for i in 0..<count { target[i] = Swift.min(target[i], source[i]) }
        }
    }

    /// Final step after all contributions are combined: divides by `size` for `average`.
    @inline(__always)
    public func finish(_ buffer: UnsafeMutablePointer<Float>, count: Int, size: Int) {
        guard self == .average, size > 1 else { return }
        let scale = 1 / Float(size)
        for i in 0..<count { buffer[i] *= scale }
    }
}

/// What a collective call throws. Every case names the operation and, when the library can
/// tell, the rank it concerns, so the executable can print one line that says who failed.
public enum CollectiveError: Error, Equatable, CustomStringConvertible {
    /// A peer closed its connection or died while `operation` needed it.
    case peerLost(rank: Int, operation: String, detail: String)
    /// `operation` did not complete within the deadline; `waitingFor` lists the ranks that had
    /// not arrived (empty when the backend cannot tell, as with MPI).
    case timeout(operation: String, waitingFor: [Int], seconds: Double)
    /// A sealed record from `rank` did not open (TCP backend, `parallel.tcp_seal`): tampered
    /// with, replayed, reordered, dropped or injected on the network. The job cannot go on.
    case tampered(rank: Int, operation: String)
    /// The arguments cannot work (sizes that do not match, a rank out of range).
    case invalidArgument(String)
    /// Start-up or transport failure with a backend-specific explanation.
    case backend(String)

    public var description: String {
        switch self {
        case let .peerLost(rank, operation, detail):
            return "rank \(rank) was lost during \(operation) (\(detail)); check that rank's log for why it stopped"
        case let .timeout(operation, waitingFor, seconds):
            let who = waitingFor.isEmpty
                ? "some rank did not join (this backend cannot tell which)"
                : "still waiting for rank\(waitingFor.count > 1 ? "s" : "") \(waitingFor.map(String.init).joined(separator: ", "))"
            return "\(operation) did not complete within \(Self.format(seconds)) s: \(who); raise --set parallel.timeout_seconds=N if that rank is only slow"
        case let .tampered(rank, operation):
            return "a sealed frame from rank \(rank) failed authentication during \(operation): it was tampered with, replayed, reordered, dropped or injected on the network (parallel.tcp_seal); the job stops"
        case let .invalidArgument(message):
            return message
        case let .backend(message):
            return message
        }
    }

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(format: "%.1f", seconds)
    }
}

/// A group of ranks that exchange data: the one abstraction every parallel feature uses.
///
/// Threading contract: every operation blocks the calling thread until it completes, the
/// deadline passes (`CollectiveError.timeout`) or a peer is lost (`.peerLost`). Call it from a
/// dedicated thread (the training loop's or a communication thread), never from a task on the
/// Swift concurrency pool. Operations on one communicator, and on the communicators split from
/// it, must not run concurrently (one thread at a time: the TCP backend shares one set of
/// sockets among them, MPI runs in `MPI_THREAD_SERIALIZED`), and must be issued in the same
/// order on every rank of the group (as in MPI). Any operation may wait until every rank it
/// exchanges data with has entered it (the TCP backend's same-host peers read large payloads
/// straight from the sender's memory), so no rank may need another to leave an operation before
/// it enters the same one.
///
/// Buffers are raw memory; counts are in elements for the Float32 reductions and in bytes for
/// the data-movement operations. Results are bitwise identical on every rank.
public protocol Communicator: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Short backend name for logs and bench output: `single`, `inprocess`, `mpi`, `tcp`.
    var backendName: String { get }
    /// Deadline, in seconds, of each blocking operation.
    var timeoutSeconds: Double { get }

    /// Combines `buffer` across ranks in place.
    func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws
    /// Copies `root`'s bytes into every rank's `buffer` (same byte count on every rank).
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws
    /// Gathers `counts[r]` bytes from each rank r, in rank order, into `output` (sum of counts).
    /// `input.count` must equal `counts[rank]`. Equal counts are the ordinary allgather.
    func allGather(_ input: UnsafeRawBufferPointer, counts: [Int], into output: UnsafeMutableRawBufferPointer) throws
    /// Reduces `input` (size × output.count floats) and leaves block `rank` in `output`.
    func reduceScatter(_ input: UnsafeBufferPointer<Float>, into output: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws
    /// Sends `sendCounts[r]` bytes (consecutive blocks of `input`) to rank r and receives
    /// `receiveCounts[r]` bytes from rank r into consecutive blocks of `output` (alltoallv).
    func allToAll(_ input: UnsafeRawBufferPointer, sendCounts: [Int],
                  into output: UnsafeMutableRawBufferPointer, receiveCounts: [Int]) throws
    /// Point-to-point: matched by (source, tag) on the receiver; byte counts must agree.
    func send(_ buffer: UnsafeRawBufferPointer, to destination: Int, tag: Int) throws
    func receive(_ buffer: UnsafeMutableRawBufferPointer, from source: Int, tag: Int) throws
    /// Returns when every rank has called it.
    func barrier() throws
    /// Collective: ranks with equal `color` form a new group, ordered by (`key`, old rank).
    func split(color: Int, key: Int) throws -> Communicator
}

extension Communicator {
    public func checkPeer(_ peer: Int, _ operation: String) throws {
        guard (0..<size).contains(peer) else {
            throw CollectiveError.invalidArgument("\(operation): rank \(peer) is outside this group of \(size) ranks (0...\(size - 1))")
        }
    }

    public func checkCounts(_ counts: [Int], _ operation: String) throws {
        guard counts.count == size, counts.allSatisfy({ $0 >= 0 }) else {
            throw CollectiveError.invalidArgument("\(operation): needs one non-negative count per rank (\(size)), got \(counts)")
        }
    }

    /// The argument rules of `allGather`, shared by every backend.
    public func checkAllGather(_ input: UnsafeRawBufferPointer, counts: [Int], _ output: UnsafeMutableRawBufferPointer) throws {
        try checkCounts(counts, "allGather")
        guard input.count == counts[rank], output.count == counts.reduce(0, +) else {
            throw CollectiveError.invalidArgument("allGather: rank \(rank) passes \(input.count) B (count says \(counts[rank])) into \(output.count) B (needs \(counts.reduce(0, +)))")
        }
    }

    /// The argument rules of `reduceScatter`, shared by every backend.
    public func checkReduceScatter(_ input: UnsafeBufferPointer<Float>, _ output: UnsafeMutableBufferPointer<Float>) throws {
        guard input.count == output.count * size else {
            throw CollectiveError.invalidArgument("reduceScatter: input has \(input.count) floats, needs size × output = \(output.count * size)")
        }
    }

    /// The argument rules of `allToAll`, shared by every backend.
    public func checkAllToAll(_ input: UnsafeRawBufferPointer, sendCounts: [Int], _ output: UnsafeMutableRawBufferPointer, receiveCounts: [Int]) throws {
        try checkCounts(sendCounts, "allToAll")
        try checkCounts(receiveCounts, "allToAll")
        guard input.count >= sendCounts.reduce(0, +), output.count >= receiveCounts.reduce(0, +) else {
            throw CollectiveError.invalidArgument("allToAll: buffers smaller than the counts on rank \(rank)")
        }
    }
}
