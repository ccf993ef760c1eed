import Collectives
import Foundation

/// Plain POSIX sockets behind the `Communicator` protocol: a full mesh between ranks,
/// bandwidth-optimal ring allreduce (reduce-scatter then all-gather: each rank sends
/// 2(N-1)/N of the buffer), ring allgather and reduce-scatter, direct pairwise all-to-all.
///
/// Ranks on one host move large collective payloads by reading each other's memory instead
/// of through the socket (`SameHostMemory`); headers and failure signals stay on the socket.
///
/// Sub-communicators from `split` share the parent's sockets; frames carry a communicator id
/// and a tag, so traffic of different groups never mixes. A peer that closes or dies makes the
/// waiting call throw `.peerLost` naming it; a silent one, `.timeout` naming it.
public final class TCPCommunicator: Communicator {
    public let rank: Int
    public var size: Int { members.count }
    public let backendName = "tcp"
    public var timeoutSeconds: Double { mesh.timeoutSeconds }
    private let mesh: TCPMesh
    /// World rank of each member of this group.
    private let members: [Int]
    private let id: UInt32
    private var splits: UInt32 = 0
    /// Tag of collective traffic (user tags are non-negative).
    private static let collectiveTag = Int64(MessageTag.tcpCollective.rawValue)

    init(mesh: TCPMesh, members: [Int], id: UInt32) {
        self.mesh = mesh
        self.members = members
        self.id = id
        rank = members.firstIndex(of: mesh.worldRank)!
    }

    /// Joins the job described by the environment (see `TCPJobSpec`), sealing its connections as `seal` says.
    public static func world(environment: [String: String], timeoutSeconds: Double, seal: TCPSealMode = .default) throws -> TCPCommunicator {
        try world(TCPJobSpec(environment: environment, seal: seal), timeoutSeconds: timeoutSeconds)
    }

    /// Socket failures (`NetworkError`) while joining are reported as `CollectiveError.backend`.
    public static func world(_ spec: TCPJobSpec, timeoutSeconds: Double) throws -> TCPCommunicator {
        let (links, sameHost) = try Rendezvous.collective {
            let links = try Rendezvous.connectAll(spec, timeoutSeconds: timeoutSeconds)
            return (links, try SameHostMemory.negotiate(sockets: links.sockets, seals: links.seals, worldRank: spec.rank, enabled: spec.sameHostMemory,
                                                        deadline: Date(timeIntervalSinceNow: timeoutSeconds)))
        }
        let mesh = TCPMesh(worldRank: spec.rank, worldSize: spec.worldSize, sockets: links.sockets, timeoutSeconds: timeoutSeconds,
                           sameHost: sameHost, seals: links.seals)
        // Said when something is sealed, or sealing was asked for (auto, the default, seals
        // nothing on one host and says nothing there).
        let sealed = links.seals.compactMap { $0 }.count
        if spec.rank == 0, spec.worldSize > 1, spec.seal == .on || (spec.seal == .auto && sealed > 0) {
            Rendezvous.log("rank 0 seals \(sealed) of its \(spec.worldSize - 1) connections (parallel.tcp_seal=\(spec.seal.rawValue))")
        }
        return TCPCommunicator(mesh: mesh, members: Array(0..<spec.worldSize), id: 0)
    }

    /// How many of this rank's connections are sealed (`parallel.tcp_seal`).
    public var sealedPeers: Int { mesh.seals.compactMap { $0 }.count }

    /// How many ranks of the whole job this one reads payloads from directly (same host), not
    /// through a socket.
    public var sameHostPeers: Int { mesh.sameHost.count }

    // MARK: Frames

    private func outgoing(_ to: Int, _ bytes: UnsafeRawBufferPointer, tag: Int64 = collectiveTag) -> OutgoingFrame {
        OutgoingFrame(peer: members[to], communicator: id, tag: tag, payload: bytes)
    }

    private func expected(_ from: Int, _ bytes: UnsafeMutableRawBufferPointer, tag: Int64 = collectiveTag,
                          combine: ((Int, UnsafeRawBufferPointer) -> Void)? = nil) -> ExpectedFrame {
        ExpectedFrame(peer: members[from], communicator: id, tag: tag, destination: bytes, combine: combine)
    }

    /// Translates world ranks in errors into this group's ranks? No: errors name world ranks,
    /// which is what a user sees in logs and launchers.
    private func transfer(_ operation: String, sends: [OutgoingFrame], receives: [ExpectedFrame]) throws {
        try mesh.transfer(operation, sends: sends, receives: receives)
    }

    private var next: Int { (rank + 1) % size }
    private var previous: Int { (rank + size - 1) % size }

    /// Chunk boundaries splitting `n` elements into `size` near-equal parts.
    private func chunks(_ n: Int) -> [Range<Int>] {
        (0..<size).map { c in (c * n / size)..<((c + 1) * n / size) }
    }

    // MARK: Collectives

    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws {
        guard size > 1, buffer.count > 0 else { return }
        let parts = chunks(buffer.count)
        let operation = "allReduce(\(op.rawValue), \(buffer.count) floats)"
        try ringReduceScatter(buffer.baseAddress!, parts, op: op, shift: 0, operation)
        let owned = parts[(rank + 1) % size]
        op.finish(buffer.baseAddress! + owned.lowerBound, count: owned.count, size: size)
        try ringAllGather(UnsafeMutableRawPointer(buffer.baseAddress!), parts.map { ($0.lowerBound * 4)..<($0.upperBound * 4) },
                          shift: 1, operation)
    }

    /// After it, this rank holds the full reduction of chunk (rank + 1 + shift) mod size.
    /// The incoming chunk is folded into this rank's copy as it arrives (`ExpectedFrame.combine`).
    private func ringReduceScatter(_ data: UnsafeMutablePointer<Float>, _ parts: [Range<Int>], op: ReduceOp, shift: Int, _ operation: String) throws {
        for step in 0..<(size - 1) {
            let sendChunk = parts[((rank - step + shift) % size + size) % size]
            let receiveChunk = parts[((rank - step - 1 + shift) % size + size) % size]
            let target = data + receiveChunk.lowerBound
            try transfer(operation,
                         sends: [outgoing(next, UnsafeRawBufferPointer(start: data + sendChunk.lowerBound, count: sendChunk.count * 4))],
                         receives: [expected(previous, UnsafeMutableRawBufferPointer(start: target, count: receiveChunk.count * 4)) { offset, bytes in
                             op.combine(into: target + offset / 4, from: bytes.baseAddress!.assumingMemoryBound(to: Float.self), count: bytes.count / 4)
                         }])
        }
    }

    /// Ring all-gather of byte ranges: this rank starts holding block (rank + shift) mod size.
    private func ringAllGather(_ data: UnsafeMutableRawPointer, _ parts: [Range<Int>], shift: Int, _ operation: String) throws {
        for step in 0..<(size - 1) {
            let sendBlock = parts[((rank - step + shift) % size + size) % size]
            let receiveBlock = parts[((rank - step - 1 + shift) % size + size) % size]
            try transfer(operation,
                         sends: [outgoing(next, UnsafeRawBufferPointer(start: data + sendBlock.lowerBound, count: sendBlock.count))],
                         receives: [expected(previous, UnsafeMutableRawBufferPointer(start: data + receiveBlock.lowerBound, count: receiveBlock.count))])
        }
    }

    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        try checkPeer(root, "broadcast")
        guard size > 1 else { return }
        let operation = "broadcast(root: \(root))"
        if rank == root {
            let bytes = UnsafeRawBufferPointer(buffer)
            try transfer(operation, sends: (0..<size).filter { $0 != root }.map { outgoing($0, bytes) }, receives: [])
        } else {
            try transfer(operation, sends: [], receives: [expected(root, buffer)])
        }
    }

    public func allGather(_ input: UnsafeRawBufferPointer, counts: [Int], into output: UnsafeMutableRawBufferPointer) throws {
        try checkAllGather(input, counts: counts, output)
        var offset = 0
        let parts = counts.map { c in defer { offset += c }; return offset..<(offset + c) }
        if input.count > 0 { (output.baseAddress! + parts[rank].lowerBound).copyMemory(from: input.baseAddress!, byteCount: input.count) }
        guard size > 1, output.count > 0 else { return }
        try ringAllGather(output.baseAddress!, parts, shift: 0, "allGather")
    }

    public func reduceScatter(_ input: UnsafeBufferPointer<Float>, into output: UnsafeMutableBufferPointer<Float>, op: ReduceOp) throws {
        let n = output.count
        try checkReduceScatter(input, output)
        guard n > 0 else { return }
        var work = Array(input)
        try work.withUnsafeMutableBufferPointer { work in
            if size > 1 {
                try ringReduceScatter(work.baseAddress!, (0..<size).map { ($0 * n)..<(($0 + 1) * n) }, op: op, shift: -1, "reduceScatter(\(op.rawValue))")
            }
            output.baseAddress!.update(from: work.baseAddress! + rank * n, count: n)
        }
        op.finish(output.baseAddress!, count: n, size: size)
    }

    public func allToAll(_ input: UnsafeRawBufferPointer, sendCounts: [Int],
                         into output: UnsafeMutableRawBufferPointer, receiveCounts: [Int]) throws {
        try checkAllToAll(input, sendCounts: sendCounts, output, receiveCounts: receiveCounts)
        var sendOffset = 0, receiveOffset = 0
        var sends: [OutgoingFrame] = [], receives: [ExpectedFrame] = []
        for peer in 0..<size {
            let source = UnsafeRawBufferPointer(start: input.baseAddress.map { $0 + sendOffset }, count: sendCounts[peer])
            let destination = UnsafeMutableRawBufferPointer(start: output.baseAddress.map { $0 + receiveOffset }, count: receiveCounts[peer])
            if peer == rank {
                guard sendCounts[peer] == receiveCounts[peer] else {
                    throw CollectiveError.invalidArgument("allToAll: rank \(rank) sends itself \(sendCounts[peer]) B but expects \(receiveCounts[peer]) B")
                }
                if sendCounts[peer] > 0 { destination.copyMemory(from: source) }
            } else {
                sends.append(outgoing(peer, source))
                receives.append(expected(peer, destination))
            }
            sendOffset += sendCounts[peer]
            receiveOffset += receiveCounts[peer]
        }
        try transfer("allToAll", sends: sends, receives: receives)
    }

    public func send(_ buffer: UnsafeRawBufferPointer, to destination: Int, tag: Int) throws {
        try checkPeer(destination, "send")
        guard tag >= 0 else { throw CollectiveError.invalidArgument("send: tags must be non-negative, got \(tag)") }
        try transfer("send(to: \(destination), tag: \(tag))", sends: [outgoing(destination, buffer, tag: Int64(tag))], receives: [])
    }

    public func receive(_ buffer: UnsafeMutableRawBufferPointer, from source: Int, tag: Int) throws {
        try checkPeer(source, "receive")
        guard tag >= 0 else { throw CollectiveError.invalidArgument("receive: tags must be non-negative, got \(tag)") }
        try transfer("receive(from: \(source), tag: \(tag))", sends: [], receives: [expected(source, buffer, tag: Int64(tag))])
    }

    public func barrier() throws {
        var token: [Float] = [0]
        try token.withUnsafeMutableBufferPointer { try allReduce($0, op: .sum) }
    }

    public func split(color: Int, key: Int) throws -> Communicator {
        splits += 1
        let colors = try allGather(Int64(color)), keys = try allGather(Int64(key))
        let group = (0..<size).filter { colors[$0] == Int64(color) }.sorted { (keys[$0], $0) < (keys[$1], $1) }
        // Same id on every member: derived from the parent's id, the split's ordinal and the colour.
        var h: UInt32 = 2_166_136_261
        for v in [id, splits, UInt32(truncatingIfNeeded: color), UInt32(truncatingIfNeeded: color >> 32)] {
            for shift in stride(from: 0, to: 32, by: 8) { h = (h ^ ((v >> UInt32(shift)) & 0xFF)) &* 16_777_619 }
        }
        return TCPCommunicator(mesh: mesh, members: group.map { members[$0] }, id: h == 0 ? 1 : h)
    }
}
