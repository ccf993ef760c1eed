import Collectives
import Foundation
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// The sockets between this process and every other rank, and the engine that moves frames.
///
/// `transfer` progresses any set of sends and receives together with `poll`, and always drains
/// every readable socket (frames nobody waits for yet are kept in a stash), so ranks that all
/// send before they receive cannot deadlock. A by-address send completes only once its receiver
/// has posted the matching receive and read it, so a transfer must post its sends and receives
/// together (every collective here does). Not thread-safe: one transfer at a time (the
/// communicator's contract).
final class TCPMesh {
    let worldRank: Int
    let worldSize: Int
    let timeoutSeconds: Double
    var sockets: [Int32]          // indexed by world rank; -1 for self
    var readers: [FrameReader]
    var closed: [String?]         // why a peer's socket ended, if it did
    var closedOrder: [Int] = []   // peers in the order their sockets ended
    var stash: [Int: [(header: FrameHeader, payload: [UInt8])]] = [:]
    /// Same-host peers whose payloads this rank reads from their memory, and those that read ours.
    let sameHost: SameHostMemory.Pairs
    /// By-address frames sent to / acknowledged by each peer (a send completes when its
    /// acknowledgement arrives; acknowledgements come in the order the frames were sent).
    private var sentByAddress: [Int]
    var acknowledged: [Int]
    /// Acknowledgements owed to each peer, not yet written (its socket was full or mid-frame).
    var controlOut: [[UInt8]]
    /// Whether a frame to each peer is partly written (nothing else may go until it is whole).
    var midFrame: [Bool]
    /// Payloads at least this large go by address to same-host peers; smaller ones are cheaper inline.
    static let byAddressMinimum = 64 << 10
    /// The seal of each sealed connection (`parallel.tcp_seal`), nil for the others (TCPMesh+Sealed.swift).
    let seals: [SessionSeal?]
    /// Per sealed peer: the record being written (sealed when its turn came) and how much of it is out.
    var sealedOut: [[UInt8]]
    var sealedOutOffset: [Int]

    init(worldRank: Int, worldSize: Int, sockets: [Int32], timeoutSeconds: Double, sameHost: SameHostMemory.Pairs? = nil,
         seals: [SessionSeal?]? = nil) {
        self.seals = seals ?? [SessionSeal?](repeating: nil, count: worldSize)
        sealedOut = [[UInt8]](repeating: [], count: worldSize)
        sealedOutOffset = [Int](repeating: 0, count: worldSize)
        self.worldRank = worldRank
        self.worldSize = worldSize
        self.sockets = sockets
        self.timeoutSeconds = timeoutSeconds
        self.sameHost = sameHost ?? SameHostMemory.Pairs(pids: [Int32?](repeating: nil, count: worldSize),
                                                         sendsByAddress: [Bool](repeating: false, count: worldSize))
        readers = (0..<worldSize).map { _ in FrameReader() }
        closed = [String?](repeating: nil, count: worldSize)
        sentByAddress = [Int](repeating: 0, count: worldSize)
        acknowledged = sentByAddress
        controlOut = [[UInt8]](repeating: [], count: worldSize)
        midFrame = [Bool](repeating: false, count: worldSize)
        for fd in sockets where fd >= 0 { Socket.setNonBlocking(fd) }
    }

    deinit {
        for fd in sockets where fd >= 0 { close(fd) }
    }

    /// Tag of the frame a rank sends its peers, best effort, when a transfer fails: it names the
    /// rank that caused it, so every survivor reports the same root cause.
    static let abortTag = Int64(MessageTag.tcpAbort.rawValue)
    var abortReport: CollectiveError?

    /// Completes every send and receive, or throws naming the peer that failed or is late.
    func transfer(_ operation: String, sends: [OutgoingFrame], receives: [ExpectedFrame]) throws {
        do {
            try transferFrames(operation, sends: sends, receives: receives)
        } catch let error as CollectiveError {
            switch error {
            case .peerLost(let rank, _, _): tellPeers(rank: rank, error: error)
            case .timeout(_, let waiting, _) where !waiting.isEmpty: tellPeers(rank: waiting[0], error: error)
            case .tampered(let rank, _): tellPeers(rank: rank, error: error)
            default: break
            }
            throw error
        }
    }

    /// Tag of the notice a rank sends when its deadline passes: the ranks it waits for.
    static let waitingTag = Int64(MessageTag.tcpWaiting.rawValue)
    var waitNotices: [Int: [Int]] = [:]

    /// The rank to blame when this one's deadline passes: it announces whom it waits for,
    /// listens for a short grace period to the others' announcements, then follows the
    /// wait-for chain (rank 1 waits for 0, 0 waits for 2, 2 says nothing) to the rank that is
    /// silent or gone, so every survivor names the hung rank, not its waiting neighbour.
    private func diagnoseTimeout(_ operation: String, waitingFor late: [Int]) -> CollectiveError {
        let payload = late.flatMap { withUnsafeBytes(of: Int64($0).littleEndian) { Array($0) } }
        let header = FrameHeader(tag: Self.waitingTag, communicator: 0, length: UInt64(payload.count)).bytes
        for peer in 0..<worldSize where peer != worldRank && sockets[peer] >= 0 && closed[peer] == nil {
            sendNotice(peer, header: header, payload: payload)
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
        if case let .tampered(root, _)? = abortReport { return .tampered(rank: root, operation: operation) }
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

    /// How an abort notice about a tampered frame starts: its readers then report `.tampered`
    /// naming the same rank, not that it was lost.
    static let tamperedNotice = "a sealed frame from it failed authentication (tampered with on the network)"

    private func tellPeers(rank: Int, error: CollectiveError) {
        guard abortReport == nil else { return }   // only the first detector tells
        let what: String
        switch error {
        case let .peerLost(_, _, detail): what = detail
        case let .timeout(_, _, seconds): what = "silent for \(Int(seconds)) s"
        case .tampered: what = Self.tamperedNotice
        default: what = "\(error)"
        }
        let text = Array("\(what), seen by rank \(worldRank)".utf8)
        let payload = withUnsafeBytes(of: Int64(rank).littleEndian) { Array($0) } + text
        let header = FrameHeader(tag: Self.abortTag, communicator: 0, length: UInt64(payload.count)).bytes
        // The rank whose frame failed authentication is told too: its socket is still open
        // (only its records stopped being read), and without the notice it would only see this
        // rank go and report it lost.
        let tamperedPeer: Int? = if case .tampered = error { rank } else { nil }
        let told = (0..<worldSize).filter { $0 != worldRank && sockets[$0] >= 0 && (closed[$0] == nil || $0 == tamperedPeer) }
        for peer in told { sendNotice(peer, header: header, payload: payload) }
        linger(told)
    }

    /// Seconds a rank that sent an abort notice waits for its peers to close.
    static let lingerSeconds = 0.5

    /// After an abort notice: ends writing to `peers` (the notice, then end of stream) and reads
    /// what they still send until each closes or `lingerSeconds` pass, so that this rank's exit
    /// does not reset the connections while data of theirs is unread: a reset can discard the
    /// notice on its way (at a proxy, say) before the peer reads it.
    private func linger(_ peers: [Int]) {
        for peer in peers { shutdown(sockets[peer], Int32(SHUT_WR)) }
        var open = peers
        var sink = [UInt8](repeating: 0, count: 64 << 10)
        let end = Date(timeIntervalSinceNow: Self.lingerSeconds)
        while !open.isEmpty, Date() < end {
            var fds = open.map { pollfd(fd: sockets[$0], events: Int16(POLLIN), revents: 0) }
            if poll(&fds, nfds_t(fds.count), 50) < 0, errno != EINTR { return }
            open = open.indices.filter { i in
                guard fds[i].revents != 0 else { return true }
                let n = recv(fds[i].fd, &sink, sink.count, 0)
                return n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))
            }.map { open[$0] }
        }
    }

    private func transferFrames(_ operation: String, sends: [OutgoingFrame], receives: [ExpectedFrame]) throws {
        // Frames to oneself go straight to the stash.
        for frame in sends where frame.peer == worldRank {
            let header = FrameHeader(tag: frame.tag, communicator: frame.communicator, length: UInt64(frame.payload.count))
            stash[worldRank, default: []].append((header, Array(frame.payload.bindMemory(to: UInt8.self))))
        }
        var sendState = sends.filter { $0.peer != worldRank }.map(prepare)
        // Start the sends before copying anything out of the stash: a by-address frame waiting
        // there is read now, and the peer should be reading ours meanwhile, not after.
        for peer in Set(sendState.map(\.frame.peer)) where sockets[peer] >= 0 && closed[peer] == nil {
            try writeReady(peer, &sendState, operation)
        }
        // Receives not yet complete; `claimed` ones have their frame arriving right now.
        var pendingReceives = try receives.indices.filter { try !takeFromStash(receives[$0], operation) }
        var claimed = Set<Int>()
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutSeconds * 1e9)
        var fds = [pollfd](repeating: pollfd(), count: worldSize)

        while !pendingReceives.isEmpty || sendState.contains(where: { !isDone($0) })
                || (0..<worldSize).contains(where: { hasControlOut($0) && closed[$0] == nil }) {
            // Read from the peers this transfer expects; while our own sends are unfinished, from
            // every peer (a peer blocked sending to us must be drained, or we both wait forever).
            let sending = sendState.contains { !isDone($0) }
            for peer in 0..<worldSize {
                var events: Int16 = 0
                if sockets[peer] >= 0, closed[peer] == nil {
                    if sending || readers[peer].header != nil || pendingReceives.contains(where: { receives[$0].peer == peer }) {
                        events = Int16(POLLIN)
                    }
                    if hasControlOut(peer) || sendState.contains(where: { $0.frame.peer == peer && !$0.written }) {
                        events |= Int16(POLLOUT)
                    }
                }
                fds[peer] = pollfd(fd: events == 0 ? -1 : sockets[peer], events: events, revents: 0)
            }
            try checkLost(operation, sendState.filter { !isDone($0) }.map(\.frame.peer), pendingReceives.map { receives[$0] })
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < deadline else {
                let late = Set(sendState.filter { !isDone($0) }.map(\.frame.peer) + pendingReceives.map { receives[$0].peer })
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
                // Reading first: a peer that stopped may have sent why (an abort notice) before
                // its socket closed, and a failed send must not hide that.
                if revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                    try readReady(peer, receives: receives, pending: &pendingReceives, claimed: &claimed, operation)
                }
                if revents & Int16(POLLOUT) != 0 {
                    try writeReady(peer, &sendState, operation)
                }
            }
        }
    }

    // MARK: Sending

    struct SendProgress {
        var frame: OutgoingFrame
        var bytes: [UInt8]       // header, and for a by-address frame nothing more
        var payload: UnsafeRawBufferPointer
        var offset = 0           // bytes of header + payload written
        var written = false
        /// For a by-address frame: the number of acknowledgements from the peer that completes it.
        var acknowledgement: Int?
    }

    /// The header (and how) a frame goes: by address to a same-host peer that reads our memory
    /// when it is large collective traffic, else inline.
    private func prepare(_ frame: OutgoingFrame) -> SendProgress {
        if sameHost.sendsByAddress[frame.peer], frame.tag < 0, frame.payload.count >= Self.byAddressMinimum {
            sentByAddress[frame.peer] += 1
            let header = FrameHeader(tag: frame.tag, communicator: frame.communicator, kind: .byAddress,
                                     length: UInt64(frame.payload.count), address: UInt64(UInt(bitPattern: frame.payload.baseAddress!)))
            return SendProgress(frame: frame, bytes: header.bytes, payload: UnsafeRawBufferPointer(start: nil, count: 0),
                                acknowledgement: sentByAddress[frame.peer])
        }
        let header = FrameHeader(tag: frame.tag, communicator: frame.communicator, length: UInt64(frame.payload.count))
        return SendProgress(frame: frame, bytes: header.bytes, payload: frame.payload)
    }

    private func isDone(_ state: SendProgress) -> Bool {
        state.written && (state.acknowledgement.map { acknowledged[state.frame.peer] >= $0 } ?? true)
    }

    private func writeReady(_ peer: Int, _ states: inout [SendProgress], _ operation: String) throws {
        if seals[peer] != nil { return try writeSealed(peer, &states, operation) }
        // Frames to one peer go strictly in order; acknowledgements go between frames.
        if !midFrame[peer] { guard try writeControl(peer, operation) else { return } }
        while let i = states.firstIndex(where: { $0.frame.peer == peer && !$0.written }) {
            let headerCount = states[i].bytes.count
            let written: Int
            if states[i].offset < headerCount {
                written = states[i].bytes.withUnsafeBytes {
                    send(sockets[peer], $0.baseAddress! + states[i].offset, headerCount - states[i].offset, Int32(MSG_NOSIGNAL))
                }
            } else {
                let start = states[i].offset - headerCount
                let payload = states[i].payload
                written = payload.count == start ? 0
                    : send(sockets[peer], payload.baseAddress! + start, payload.count - start, Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                if errno == EINTR { continue }
                throw sendFailed(peer, operation)
            }
            states[i].offset += written
            midFrame[peer] = true
            if states[i].offset == headerCount + states[i].payload.count {
                states[i].written = true
                midFrame[peer] = false
                guard try writeControl(peer, operation) else { return }
            }
        }
    }

    /// Queues an acknowledgement of a by-address frame from `peer` and writes it if it can go now.
    private func acknowledge(_ peer: Int, _ operation: String) throws {
        controlOut[peer] += FrameHeader(tag: 0, communicator: 0, kind: .acknowledgement, length: 0).bytes
        if !midFrame[peer] { _ = try seals[peer] != nil ? writeSealedControl(peer, operation) : writeControl(peer, operation) }
    }

    /// Writes the control frames queued for `peer`; false if its socket is full. Callers make
    /// sure no frame to that peer is partly written.
    private func writeControl(_ peer: Int, _ operation: String) throws -> Bool {
        while !controlOut[peer].isEmpty {
            let n = controlOut[peer].withUnsafeBytes { send(sockets[peer], $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return false }
                throw sendFailed(peer, operation)
            }
            controlOut[peer].removeFirst(n)
        }
        return true
    }

    func sendFailed(_ peer: Int, _ operation: String) -> CollectiveError {
        if closed[peer] == nil { closedOrder.append(peer) }
        closed[peer] = "send failed: \(Socket.errorText())"
        return lost(peer, operation)
    }

    // MARK: Receiving

    private func takeFromStash(_ expected: ExpectedFrame, _ operation: String) throws -> Bool {
        guard let index = stash[expected.peer]?.firstIndex(where: {
            $0.header.communicator == expected.communicator && $0.header.tag == expected.tag
        }) else { return false }
        let frame = stash[expected.peer]!.remove(at: index)
        try checkLength(frame.header, expected, from: expected.peer, operation)
        if frame.header.kind == .byAddress {
            try pull(frame.header, from: expected.peer, into: expected, operation)
        } else {
            frame.payload.withUnsafeBytes { expected.deliver($0) }
        }
        return true
    }

    /// The first receive of this transfer, not yet being filled, that a frame with `header` from `peer` satisfies.
    func match(_ header: FrameHeader, from peer: Int, _ receives: [ExpectedFrame], _ pending: [Int], _ claimed: Set<Int>) -> Int? {
        pending.first {
            !claimed.contains($0) && receives[$0].peer == peer
                && receives[$0].communicator == header.communicator && receives[$0].tag == header.tag
        }
    }

    func checkLength(_ header: FrameHeader, _ expected: ExpectedFrame, from peer: Int, _ operation: String) throws {
        guard expected.destination.count == Int(header.length) else {
            throw CollectiveError.invalidArgument("\(operation): rank \(peer) sent \(header.length) B, rank \(worldRank) expects \(expected.destination.count) B")
        }
    }

    private func readReady(_ peer: Int, receives: [ExpectedFrame], pending: inout [Int], claimed: inout Set<Int>, _ operation: String) throws {
        if seals[peer] != nil { return try readSealedReady(peer, receives: receives, pending: &pending, claimed: &claimed, operation) }
        let reader = readers[peer]
        while true {
            if reader.header == nil {
                let n = reader.headerBytes.withUnsafeMutableBytes {
                    recv(sockets[peer], $0.baseAddress! + reader.headerFilled, FrameHeader.size - reader.headerFilled, 0)
                }
                if try !progressed(n, peer) { return }
                reader.headerFilled += n
                guard reader.headerFilled == FrameHeader.size else { continue }
                let header = try reader.headerBytes.withUnsafeBytes { try readHeader($0, from: peer, operation) }
                guard try begin(header, from: peer, receives, &pending, &claimed, operation) else { reader.reset(); continue }
            }
            let header = reader.header!
            let remaining = Int(header.length) - reader.filled
            if remaining > 0 {
                let n: Int
                if let target = reader.target, target.combine != nil {
                    // Fold the payload in piece by piece while it is still in cache.
                    let segment = reader.segment
                    let room = min(remaining, segment.count - reader.segmentFilled)
                    n = recv(sockets[peer], segment.baseAddress! + reader.segmentFilled, room, 0)
                    if try !progressed(n, peer) { return }
                    reader.segmentFilled += n
                    if reader.segmentFilled == segment.count || n == remaining {
                        let start = reader.filled + n - reader.segmentFilled
                        target.combine!(start, UnsafeRawBufferPointer(start: segment.baseAddress, count: reader.segmentFilled))
                        reader.segmentFilled = 0
                    }
                } else if let target = reader.target {
                    n = recv(sockets[peer], target.destination.baseAddress! + reader.filled, remaining, 0)
                    if try !progressed(n, peer) { return }
                } else {
                    n = reader.spill.withUnsafeMutableBytes { recv(sockets[peer], $0.baseAddress! + reader.filled, remaining, 0) }
                    if try !progressed(n, peer) { return }
                }
                reader.filled += n
                if reader.filled < Int(header.length) { continue }
            }
            try complete(peer, receives, &pending, &claimed, operation)
        }
    }

    /// A whole header from `peer`, its length bounded before anything uses it: a notice's by
    /// `maxNoticeBytes`, any other frame's by this host's memory (a receive of it must fit here;
    /// a frame a receive waits for is then held to that receive's size by `checkLength`). In
    /// clear mode the header is not authenticated, so this is what stands between a forged or
    /// corrupt length and an allocation of that size.
    func readHeader(_ raw: UnsafeRawBufferPointer, from peer: Int, _ operation: String) throws -> FrameHeader {
        guard let header = FrameHeader(raw) else {
            throw CollectiveError.backend("\(operation): rank \(peer) sent a frame this rank cannot read (a different Tessera version?)")
        }
        let notice = header.tag == Self.abortTag || header.tag == Self.waitingTag
        let limit = notice ? UInt64(Self.maxNoticeBytes) : Self.maxFrameBytes
        guard header.length <= limit else {
            throw CollectiveError.backend("\(operation): rank \(peer) sent a frame header announcing \(header.length) B, over the \(limit)-byte limit of \(notice ? "a notice" : "a frame (this host's memory)"); a corrupt or forged header, refused before allocating")
        }
        return header
    }

    /// The largest abort or waiting notice (a rank and a line of text; a rank per peer).
    static let maxNoticeBytes = 64 << 10
    /// The largest frame a rank accepts: its receive must fit in this host's memory.
    static let maxFrameBytes = min(ProcessInfo.processInfo.physicalMemory, UInt64(Int.max))

    /// What a whole header starts. Acknowledgements and by-address frames are handled here
    /// (false: nothing more of the frame to read). An inline frame gets where its payload
    /// goes: straight into the receive that waits for it, else the spill.
    func begin(_ header: FrameHeader, from peer: Int, _ receives: [ExpectedFrame], _ pending: inout [Int], _ claimed: inout Set<Int>,
               _ operation: String) throws -> Bool {
        let reader = readers[peer]
        switch header.kind {
        case .acknowledgement:
            acknowledged[peer] += 1
            return false
        case .byAddress:
            try readByAddress(header, from: peer, receives, &pending, claimed, operation)
            return false
        case .inline:
            break
        }
        reader.header = header
        reader.filled = 0
        if let slot = match(header, from: peer, receives, pending, claimed) {
            try checkLength(header, receives[slot], from: peer, operation)
            reader.target = receives[slot]
            reader.targetSlot = slot
            claimed.insert(slot)
        } else {
            reader.target = nil
            reader.spill = [UInt8](unsafeUninitializedCapacity: Int(header.length)) { _, initialised in initialised = Int(header.length) }
        }
        return true
    }

    /// A frame from `peer` has all its payload: it completes a receive, or is a notice, or waits in the stash.
    func complete(_ peer: Int, _ receives: [ExpectedFrame], _ pending: inout [Int], _ claimed: inout Set<Int>, _ operation: String) throws {
        let reader = readers[peer]
        let header = reader.header!
        if header.tag == Self.abortTag, reader.spill.count >= 8 {
            let root = Int(Int64(littleEndian: reader.spill.withUnsafeBytes { $0.loadUnaligned(as: Int64.self) }))
            let text = String(decoding: reader.spill.dropFirst(8), as: UTF8.self)
            abortReport = text.hasPrefix(Self.tamperedNotice) ? .tampered(rank: root, operation: operation)
                : .peerLost(rank: root, operation: operation, detail: text)
        } else if header.tag == Self.waitingTag {
            waitNotices[peer] = reader.spill.withUnsafeBytes { raw in
                (0..<(raw.count / 8)).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
            }
        } else if let slot = reader.targetSlot {
            pending.removeAll { $0 == slot }
            claimed.remove(slot)
        } else if let slot = match(header, from: peer, receives, pending, claimed) {
            // A frame that began arriving during an earlier transfer, before it was expected.
            try checkLength(header, receives[slot], from: peer, operation)
            reader.spill.withUnsafeBytes { receives[slot].deliver($0) }
            pending.removeAll { $0 == slot }
        } else {
            stash[peer, default: []].append((header, reader.spill))
        }
        reader.reset()
    }

    /// A by-address frame: copied out of the sending process into the receive that waits for
    /// it, which the acknowledgement then lets the sender's operation finish. One nobody waits
    /// for yet stays in the stash as just its header and is read when its receive is posted
    /// (copying it early would cost a second copy, and a peer a step ahead would make this rank
    /// copy while it should be sending).
    func readByAddress(_ header: FrameHeader, from peer: Int, _ receives: [ExpectedFrame], _ pending: inout [Int],
                               _ claimed: Set<Int>, _ operation: String) throws {
        guard sameHost.pids[peer] != nil else {
            throw CollectiveError.backend("\(operation): rank \(peer) sent a payload by address, but rank \(worldRank) did not agree to read its memory")
        }
        guard let slot = match(header, from: peer, receives, pending, claimed) else {
            stash[peer, default: []].append((header, []))
            return
        }
        try checkLength(header, receives[slot], from: peer, operation)
        try pull(header, from: peer, into: receives[slot], operation)
        pending.removeAll { $0 == slot }
    }

    /// Copies the payload of by-address frame `header` from `peer`'s memory into `expected`, then
    /// acknowledges it.
    private func pull(_ header: FrameHeader, from peer: Int, into expected: ExpectedFrame, _ operation: String) throws {
        let pid = sameHost.pids[peer]!
        func read(_ offset: Int, into destination: UnsafeMutableRawBufferPointer) throws {
            if let failure = SameHostMemory.read(pid: pid, address: header.address + UInt64(offset), into: destination) {
                // Usually a process that has ended; its socket may still look open, so the
                // abort frame `transfer` sends also reaches a peer that is alive after all.
                throw CollectiveError.peerLost(rank: peer, operation: operation,
                                               detail: "its memory could not be read (\(Socket.errorText(failure))): the process has ended or is ending")
            }
        }
        let count = Int(header.length)
        if let combine = expected.combine {
            // Piece by piece through a buffer that stays in cache.
            let segment = readers[peer].segment
            var offset = 0
            while offset < count {
                let piece = UnsafeMutableRawBufferPointer(start: segment.baseAddress, count: min(segment.count, count - offset))
                try read(offset, into: piece)
                combine(offset, UnsafeRawBufferPointer(piece))
                offset += piece.count
            }
        } else if count > 0 {
            try read(0, into: expected.destination)
        }
        try acknowledge(peer, operation)
    }

    /// Interprets a recv() result: true if bytes arrived, false if the socket would block;
    /// records a closed peer (thrown later only if someone needs that peer).
    func progressed(_ n: Int, _ peer: Int) throws -> Bool {
        if n > 0 { return true }
        if n < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return false }
        if closed[peer] == nil { closedOrder.append(peer) }
        closed[peer] = n == 0 ? "connection closed" : Socket.errorText()
        return false
    }

    private func checkLost(_ operation: String, _ sendingTo: [Int], _ receives: [ExpectedFrame]) throws {
        if abortReport != nil { throw lost(worldRank, operation) }
        for peer in Set(sendingTo + receives.map(\.peer)) where closed[peer] != nil {
            throw lost(peer, operation)
        }
    }

    /// The error for losing `peer`: the root cause another rank reported, if any; otherwise the
    /// peer that went first (when one rank dies its neighbours fail next, so the first loss seen
    /// here is the likelier cause).
    func lost(_ peer: Int, _ operation: String) -> CollectiveError {
        switch abortReport {
        case let .peerLost(root, _, detail)?: return .peerLost(rank: root, operation: operation, detail: detail)
        case let .tampered(root, _)?: return .tampered(rank: root, operation: operation)
        default: break
        }
        let first = closedOrder.first ?? peer
        let why = closed[first] ?? "connection closed"
        return .peerLost(rank: first, operation: operation,
                         detail: first == peer ? why : "\(why); rank \(peer), which this operation waits for, has gone too")
    }
}

