import Collectives
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One frame on the wire: a 24-byte header (tag, communicator id, payload length), then the payload.
struct FrameHeader: Equatable {
    static let size = 24
    var tag: Int64
    var communicator: UInt32
    var length: UInt64

    var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes {
            $0.storeBytes(of: tag.littleEndian, toByteOffset: 0, as: Int64.self)
            $0.storeBytes(of: communicator.littleEndian, toByteOffset: 8, as: UInt32.self)
            $0.storeBytes(of: length.littleEndian, toByteOffset: 16, as: UInt64.self)
        }
        return out
    }

    init(tag: Int64, communicator: UInt32, length: UInt64) {
        self.tag = tag
        self.communicator = communicator
        self.length = length
    }

    init(_ raw: UnsafeRawBufferPointer) {
        tag = Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: Int64.self))
        communicator = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        length = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
    }
}

/// A send the mesh must complete: header then payload to `peer` (a world rank).
struct OutgoingFrame {
    var peer: Int
    var header: [UInt8]
    var payload: UnsafeRawBufferPointer
}

/// A receive the mesh must complete: the next frame from `peer` with this (communicator, tag),
/// whose length must equal `destination.count`.
struct ExpectedFrame {
    var peer: Int
    var communicator: UInt32
    var tag: Int64
    var destination: UnsafeMutableRawBufferPointer
}

/// The sockets between this process and every other rank, and the engine that moves frames.
///
/// `transfer` progresses any set of sends and receives together with `poll`, and always drains
/// every readable socket (frames nobody waits for yet are kept in a stash), so ranks that all
/// send before they receive cannot deadlock. Not thread-safe: one transfer at a time (the
/// communicator's contract).
final class TCPMesh {
    let worldRank: Int
    let worldSize: Int
    let timeoutSeconds: Double
    private var sockets: [Int32]          // indexed by world rank; -1 for self
    private var readers: [FrameReader]
    private var closed: [String?]         // why a peer's socket ended, if it did
    private var closedOrder: [Int] = []   // peers in the order their sockets ended
    private var stash: [Int: [(header: FrameHeader, payload: [UInt8])]] = [:]

    init(worldRank: Int, worldSize: Int, sockets: [Int32], timeoutSeconds: Double) {
        self.worldRank = worldRank
        self.worldSize = worldSize
        self.sockets = sockets
        self.timeoutSeconds = timeoutSeconds
        readers = (0..<worldSize).map { _ in FrameReader() }
        closed = [String?](repeating: nil, count: worldSize)
        for fd in sockets where fd >= 0 { Socket.setNonBlocking(fd) }
    }

    deinit {
        for fd in sockets where fd >= 0 { close(fd) }
    }

    /// Tag of the frame a rank sends its peers, best effort, when a transfer fails: it names the
    /// rank that caused it, so every survivor reports the same root cause.
    static let abortTag = Int64.min
    private var abortReport: CollectiveError?

    /// Completes every send and receive, or throws naming the peer that failed or is late.
    func transfer(_ operation: String, sends: [OutgoingFrame], receives: [ExpectedFrame]) throws {
        do {
            try transferFrames(operation, sends: sends, receives: receives)
        } catch let error as CollectiveError {
            switch error {
            case .peerLost(let rank, _, _): tellPeers(rank: rank, error: error)
            case .timeout(_, let waiting, _) where !waiting.isEmpty: tellPeers(rank: waiting[0], error: error)
            default: break
            }
            throw error
        }
    }

    /// Tag of the notice a rank sends when its deadline passes: the ranks it waits for.
    static let waitingTag = Int64.min + 1
    private var waitNotices: [Int: [Int]] = [:]

    /// The rank to blame when this one's deadline passes: it announces whom it waits for,
    /// listens for a short grace period to the others' announcements, then follows the
    /// wait-for chain (rank 1 waits for 0, 0 waits for 2, 2 says nothing) to the rank that is
    /// silent or gone, so every survivor names the hung rank, not its waiting neighbour.
    private func diagnoseTimeout(_ operation: String, waitingFor late: [Int]) -> CollectiveError {
        let payload = late.flatMap { withUnsafeBytes(of: Int64($0).littleEndian) { Array($0) } }
        let frame = FrameHeader(tag: Self.waitingTag, communicator: 0, length: UInt64(payload.count)).bytes + payload
        for peer in 0..<worldSize where peer != worldRank && sockets[peer] >= 0 && closed[peer] == nil {
            _ = frame.withUnsafeBytes { send(sockets[peer], $0.baseAddress!, frame.count, Int32(MSG_NOSIGNAL)) }
        }
        let grace = Date(timeIntervalSinceNow: min(5, max(1, timeoutSeconds * 0.2)))
        var pending: [Int] = [], claimed = Set<Int>()
        var fds = [pollfd](repeating: pollfd(), count: worldSize)
        while Date() < grace, abortReport == nil {
            for peer in 0..<worldSize {
                let live = sockets[peer] >= 0 && closed[peer] == nil
                fds[peer] = pollfd(fd: live ? sockets[peer] : -1, events: Int16(POLLIN), revents: 0)
            }
            if poll(&fds, nfds_t(worldSize), 100) > 0 {
                for peer in 0..<worldSize where fds[peer].revents != 0 {
                    try? readReady(peer, receives: [], pending: &pending, claimed: &claimed, operation)
                }
            }
        }
        if case let .peerLost(root, _, _)? = abortReport {
            return .timeout(operation: operation, waitingFor: [root], seconds: timeoutSeconds)
        }
        // Follow each chain to its end: a rank that announced nothing (silent) or is gone.
        var blamed = Set<Int>()
        for start in late {
            var rank = start, seen: Set<Int> = [worldRank]
            while closed[rank] == nil, let next = waitNotices[rank]?.first(where: { !seen.contains($0) }) {
                seen.insert(rank)
                rank = next
            }
            blamed.insert(rank)
        }
        return .timeout(operation: operation, waitingFor: blamed.sorted(), seconds: timeoutSeconds)
    }

    private func tellPeers(rank: Int, error: CollectiveError) {
        guard abortReport == nil else { return }   // only the first detector tells
        let what: String
        switch error {
        case let .peerLost(_, _, detail): what = detail
        case let .timeout(_, _, seconds): what = "silent for \(Int(seconds)) s"
        default: what = "\(error)"
        }
        let text = Array("\(what), seen by rank \(worldRank)".utf8)
        let payload = withUnsafeBytes(of: Int64(rank).littleEndian) { Array($0) } + text
        let header = FrameHeader(tag: Self.abortTag, communicator: 0, length: UInt64(payload.count)).bytes
        for peer in 0..<worldSize where peer != worldRank && sockets[peer] >= 0 && closed[peer] == nil {
            let frame = header + payload
            _ = frame.withUnsafeBytes { send(sockets[peer], $0.baseAddress!, frame.count, Int32(MSG_NOSIGNAL)) }
        }
    }

    private func transferFrames(_ operation: String, sends: [OutgoingFrame], receives: [ExpectedFrame]) throws {
        // Frames to oneself go straight to the stash.
        for frame in sends where frame.peer == worldRank {
            let header = frame.header.withUnsafeBytes { FrameHeader($0) }
            stash[worldRank, default: []].append((header, Array(frame.payload.bindMemory(to: UInt8.self))))
        }
        var sendState = sends.filter { $0.peer != worldRank }.map { SendProgress(frame: $0) }
        // Receives not yet complete; `claimed` ones have their frame arriving right now.
        var pendingReceives = receives.indices.filter { !takeFromStash(receives[$0]) }
        var claimed = Set<Int>()
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutSeconds * 1e9)
        var fds = [pollfd](repeating: pollfd(), count: worldSize)

        while !pendingReceives.isEmpty || sendState.contains(where: { !$0.done }) {
            // Read from the peers this transfer expects; while our own sends are unfinished, from
            // every peer (a peer blocked sending to us must be drained, or we both wait forever).
            let sending = sendState.contains { !$0.done }
            for peer in 0..<worldSize {
                var events: Int16 = 0
                if sockets[peer] >= 0, closed[peer] == nil {
                    if sending || readers[peer].header != nil || pendingReceives.contains(where: { receives[$0].peer == peer }) {
                        events = Int16(POLLIN)
                    }
                    if sendState.contains(where: { $0.frame.peer == peer && !$0.done }) { events |= Int16(POLLOUT) }
                }
                fds[peer] = pollfd(fd: events == 0 ? -1 : sockets[peer], events: events, revents: 0)
            }
            try checkLost(operation, sendState, pendingReceives.map { receives[$0] })
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < deadline else {
                let late = Set(sendState.filter { !$0.done }.map(\.frame.peer) + pendingReceives.map { receives[$0].peer })
                throw diagnoseTimeout(operation, waitingFor: late.sorted())
            }
            let waitMilliseconds = Int32(min(1000, (deadline - now) / 1_000_000 + 1))
            let ready = poll(&fds, nfds_t(worldSize), waitMilliseconds)
            if ready < 0 {
                if errno == EINTR { continue }
                throw CollectiveError.backend("\(operation): poll() failed: \(Socket.errorText())")
            }
            for peer in 0..<worldSize where fds[peer].revents != 0 {
                let revents = fds[peer].revents
                if revents & Int16(POLLOUT) != 0 {
                    try writeReady(peer, &sendState, operation)
                }
                if revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                    try readReady(peer, receives: receives, pending: &pendingReceives, claimed: &claimed, operation)
                }
            }
        }
    }

    // MARK: Sending

    private struct SendProgress {
        var frame: OutgoingFrame
        var offset = 0        // bytes of header + payload written
        var done = false
        init(frame: OutgoingFrame) { self.frame = frame }
    }

    private func writeReady(_ peer: Int, _ states: inout [SendProgress], _ operation: String) throws {
        // Frames to one peer go strictly in order.
        guard let i = states.firstIndex(where: { $0.frame.peer == peer && !$0.done }) else { return }
        while !states[i].done {
            let headerCount = states[i].frame.header.count
            let written: Int
            if states[i].offset < headerCount {
                written = states[i].frame.header.withUnsafeBytes {
                    send(sockets[peer], $0.baseAddress! + states[i].offset, headerCount - states[i].offset, Int32(MSG_NOSIGNAL))
                }
            } else {
                let start = states[i].offset - headerCount
                let payload = states[i].frame.payload
                written = payload.count == start ? 0
                    : send(sockets[peer], payload.baseAddress! + start, payload.count - start, Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                if errno == EINTR { continue }
                if closed[peer] == nil { closedOrder.append(peer) }
                closed[peer] = "send failed: \(Socket.errorText())"
                throw lost(peer, operation)
            }
            states[i].offset += written
            if states[i].offset == headerCount + states[i].frame.payload.count { states[i].done = true }
        }
    }

    // MARK: Receiving

    private func takeFromStash(_ expected: ExpectedFrame) -> Bool {
        guard let index = stash[expected.peer]?.firstIndex(where: {
            $0.header.communicator == expected.communicator && $0.header.tag == expected.tag
        }) else { return false }
        let frame = stash[expected.peer]!.remove(at: index)
        precondition(frame.payload.count == expected.destination.count,
                     "frame from rank \(expected.peer) has \(frame.payload.count) B, receiver expects \(expected.destination.count) B")
        frame.payload.withUnsafeBytes { expected.destination.copyMemory(from: $0) }
        return true
    }

    private func readReady(_ peer: Int, receives: [ExpectedFrame], pending: inout [Int], claimed: inout Set<Int>, _ operation: String) throws {
        let reader = readers[peer]
        while true {
            if reader.header == nil {
                let n = reader.headerBytes.withUnsafeMutableBytes {
                    recv(sockets[peer], $0.baseAddress! + reader.headerFilled, FrameHeader.size - reader.headerFilled, 0)
                }
                if try !progressed(n, peer) { return }
                reader.headerFilled += n
                guard reader.headerFilled == FrameHeader.size else { continue }
                let header = reader.headerBytes.withUnsafeBytes { FrameHeader($0) }
                reader.header = header
                reader.filled = 0
                // Deliver straight into the waiting buffer when this frame is the one expected.
                if let slot = pending.first(where: {
                    !claimed.contains($0) && receives[$0].peer == peer
                        && receives[$0].communicator == header.communicator && receives[$0].tag == header.tag
                }) {
                    let expected = receives[slot]
                    guard expected.destination.count == Int(header.length) else {
                        throw CollectiveError.invalidArgument("\(operation): rank \(peer) sent \(header.length) B, rank \(worldRank) expects \(expected.destination.count) B")
                    }
                    reader.target = expected.destination
                    reader.targetSlot = slot
                    claimed.insert(slot)
                } else {
                    reader.target = nil
                    reader.spill = [UInt8](unsafeUninitializedCapacity: Int(header.length)) { _, initialised in initialised = Int(header.length) }
                }
            }
            let header = reader.header!
            let remaining = Int(header.length) - reader.filled
            if remaining > 0 {
                let n: Int
                if let target = reader.target {
                    n = recv(sockets[peer], target.baseAddress! + reader.filled, remaining, 0)
                } else {
                    n = reader.spill.withUnsafeMutableBytes { recv(sockets[peer], $0.baseAddress! + reader.filled, remaining, 0) }
                }
                if try !progressed(n, peer) { return }
                reader.filled += n
                if reader.filled < Int(header.length) { continue }
            }
            // Frame complete.
            if header.tag == Self.abortTag, reader.spill.count >= 8 {
                let root = Int(Int64(littleEndian: reader.spill.withUnsafeBytes { $0.loadUnaligned(as: Int64.self) }))
                let text = String(decoding: reader.spill.dropFirst(8), as: UTF8.self)
                abortReport = .peerLost(rank: root, operation: operation, detail: text)
            } else if header.tag == Self.waitingTag {
                waitNotices[peer] = reader.spill.withUnsafeBytes { raw in
                    (0..<(raw.count / 8)).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
                }
            } else if let slot = reader.targetSlot {
                pending.removeAll { $0 == slot }
                claimed.remove(slot)
            } else if let slot = pending.first(where: {
                // A frame that began arriving during an earlier transfer, before it was expected.
                !claimed.contains($0) && receives[$0].peer == peer
                    && receives[$0].communicator == header.communicator && receives[$0].tag == header.tag
            }) {
                guard receives[slot].destination.count == reader.spill.count else {
                    throw CollectiveError.invalidArgument("\(operation): rank \(peer) sent \(reader.spill.count) B, rank \(worldRank) expects \(receives[slot].destination.count) B")
                }
                reader.spill.withUnsafeBytes { receives[slot].destination.copyMemory(from: $0) }
                pending.removeAll { $0 == slot }
            } else {
                stash[peer, default: []].append((header, reader.spill))
            }
            reader.reset()
        }
    }

    /// Interprets a recv() result: true if bytes arrived, false if the socket would block;
    /// records a closed peer (thrown later only if someone needs that peer).
    private func progressed(_ n: Int, _ peer: Int) throws -> Bool {
        if n > 0 { return true }
        if n < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return false }
        if closed[peer] == nil { closedOrder.append(peer) }
        closed[peer] = n == 0 ? "connection closed" : Socket.errorText()
        return false
    }

    private func checkLost(_ operation: String, _ sends: [SendProgress], _ receives: [ExpectedFrame]) throws {
        if abortReport != nil { throw lost(worldRank, operation) }
        for peer in Set(sends.filter { !$0.done }.map(\.frame.peer) + receives.map(\.peer)) where closed[peer] != nil {
            throw lost(peer, operation)
        }
    }

    /// The error for losing `peer`: the root cause another rank reported, if any; otherwise the
    /// peer that went first (when one rank dies its neighbours fail next, so the first loss seen
    /// here is the likelier cause).
    private func lost(_ peer: Int, _ operation: String) -> CollectiveError {
        if case let .peerLost(root, _, detail)? = abortReport {
            return .peerLost(rank: root, operation: operation, detail: detail)
        }
        let first = closedOrder.first ?? peer
        let why = closed[first] ?? "connection closed"
        return .peerLost(rank: first, operation: operation,
                         detail: first == peer ? why : "\(why); rank \(peer), which this operation waits for, has gone too")
    }
}

/// Per-peer state of a frame being read.
final class FrameReader {
    var headerBytes = [UInt8](repeating: 0, count: FrameHeader.size)
    var headerFilled = 0
    var header: FrameHeader?
    var filled = 0
    var target: UnsafeMutableRawBufferPointer?
    var targetSlot: Int?
    var spill: [UInt8] = []

    func reset() {
        headerFilled = 0
        header = nil
        filled = 0
        target = nil
        targetSlot = nil
        spill = []
    }
}
