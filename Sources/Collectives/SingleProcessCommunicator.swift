/// The size-1 group a plain `tessera ...` gets: the same code path as N ranks, where every
/// collective is the identity (or a copy).
public final class SingleProcessCommunicator: Communicator {
    public let rank = 0
    public let size = 1
    public let backendName = "single"
    public let timeoutSeconds: Double
    private var pending: [Int: [[UInt8]]] = [:]

    public init(timeoutSeconds: Double = 300) { self.timeoutSeconds = timeoutSeconds }

    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws {}

    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        try checkPeer(root, "broadcast")
    }

    public func allGather(_ input: UnsafeRawBufferPointer, counts: [Int], into output: UnsafeMutableRawBufferPointer) throws {
        try checkCounts(counts, "allGather")
        guard input.count == counts[0], output.count == counts[0] else {
            throw CollectiveError.invalidArgument("allGather: input \(input.count) B and output \(output.count) B must both be \(counts[0]) B")
        }
        if input.count > 0 { output.baseAddress!.copyMemory(from: input.baseAddress!, byteCount: input.count) }
    }

    public func reduceScatter(_ input: UnsafeBufferPointer<Float>, into output: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws {
        guard input.count == output.count else {
            throw CollectiveError.invalidArgument("reduceScatter: input has \(input.count) floats, needs size × output = \(output.count)")
        }
        if input.count > 0 { output.baseAddress!.update(from: input.baseAddress!, count: input.count) }
    }

    public func allToAll(_ input: UnsafeRawBufferPointer, sendCounts: [Int],
                         into output: UnsafeMutableRawBufferPointer, receiveCounts: [Int]) throws {
        try checkCounts(sendCounts, "allToAll")
        try checkCounts(receiveCounts, "allToAll")
        guard sendCounts[0] == receiveCounts[0], input.count >= sendCounts[0], output.count >= receiveCounts[0] else {
            throw CollectiveError.invalidArgument("allToAll: send count \(sendCounts[0]) B must equal receive count \(receiveCounts[0]) B on one rank")
        }
        if sendCounts[0] > 0 { output.baseAddress!.copyMemory(from: input.baseAddress!, byteCount: sendCounts[0]) }
    }

    public func send(_ buffer: UnsafeRawBufferPointer, to destination: Int, tag: Int) throws {
        try checkPeer(destination, "send")
        pending[tag, default: []].append(Array(buffer.bindMemory(to: UInt8.self)))
    }

    public func receive(_ buffer: UnsafeMutableRawBufferPointer, from source: Int, tag: Int) throws {
        try checkPeer(source, "receive")
        guard var queue = pending[tag], !queue.isEmpty else {
            // Nothing can arrive later: this rank is the only sender, and it has not sent this tag.
            throw CollectiveError.invalidArgument("receive(from: 0, tag: \(tag)): nothing was sent with this tag; in a one-rank group a receive must follow its own send")
        }
        let message = queue.removeFirst()
        pending[tag] = queue
        guard message.count == buffer.count else {
            throw CollectiveError.invalidArgument("receive(tag: \(tag)): message has \(message.count) B, buffer \(buffer.count) B")
        }
        message.withUnsafeBytes { buffer.copyMemory(from: $0) }
    }

    public func barrier() throws {}

    public func split(color: Int, key: Int) throws -> Communicator {
        SingleProcessCommunicator(timeoutSeconds: timeoutSeconds)
    }
}
