import Foundation
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// Kinds of frames of the checkpoint service protocol.
public enum FrameType: UInt8, Sendable {
    /// client → service: a part's header (JSON `PartHeader`); then `fileData` frames, file after
    /// file in the header's order (a file whose SHA-256 the header left empty is followed by a
    /// `fileEnd` frame giving it), then `partEnd`.
    case putPart = 1
    case fileData = 2
    case partEnd = 3
    /// client → service: list complete checkpoints (reply `ok` with a JSON `[StepInfo]`).
    case list = 4
    /// client → service: fetch a complete checkpoint (JSON `{"step": N}`); the reply is, per
    /// file, `fileBegin` (JSON `FileBegin`), `fileData`..., `fileEnd` (JSON `{"sha256": ...}`),
    /// then `ok`.
    case get = 5
    case fileBegin = 6
    case fileEnd = 7
    /// client → service: run a job on the service's checkpoints (JSON `ServiceJobRequest`);
    /// the reply is `ok` with a JSON `ServiceJobResult`, or `error`.
    case job = 8
    /// service → client: success, with a JSON payload.
    case ok = 20
    /// service → client: a refusal, as one line of text.
    case error = 21
}

/// One frame: type (1 byte), payload length (UInt32 LE), payload, CRC-32 of all of those (UInt32 LE).
public struct Frame: Sendable {
    public var type: FrameType
    public var payload: [UInt8]

    public init(_ type: FrameType, _ payload: [UInt8] = []) { self.type = type; self.payload = payload }

    /// Largest payload accepted: files travel in chunks of `chunkBytes`.
    public static let maxPayload = 16 << 20
    /// File bytes per `fileData` frame.
    public static let chunkBytes = 1 << 20

    public var bytes: [UInt8] {
        let out = unsealed
        return out + Self.littleEndian(CRC32.checksum(out))
    }

    /// Type, length and payload: what a sealed connection encrypts (the AEAD tag replaces the CRC).
    var unsealed: [UInt8] { [type.rawValue] + Self.littleEndian(UInt32(payload.count)) + payload }

    /// The payload length a frame's 5-byte head announces; over `maxPayload` is `badFrame`
    /// (checked before anything is allocated for it).
    static func payloadLength(head: [UInt8], address: String, while doing: String) throws -> Int {
        let length = Int(uint32(head[1...]))
        guard length <= maxPayload else {
            throw CheckpointServiceError.badFrame(address: address, reason: "length \(length) over the \(maxPayload)-byte limit while \(doing)")
        }
        return length
    }

    /// The frame of `head` and `payload` once its 4 CRC bytes match and its type is known.
    static func checked(head: [UInt8], payload: [UInt8], crc: [UInt8], address: String, while doing: String) throws -> Frame {
        guard CRC32.checksum(head + payload) == uint32(crc[...]) else {
            throw CheckpointServiceError.badFrame(address: address, reason: "CRC-32 mismatch on a \(payload.count)-byte frame while \(doing)")
        }
        guard let type = FrameType(rawValue: head[0]) else {
            throw CheckpointServiceError.badFrame(address: address, reason: "unknown frame type \(head[0]) while \(doing)")
        }
        return Frame(type, payload)
    }

    /// The frame at the start of `bytes` and how many bytes it took, checked as `receive` checks
    /// one from a socket (for tests, and anything holding frames in memory); too few bytes is `badFrame`.
    public static func parse(_ bytes: [UInt8], address: String = "memory") throws -> (frame: Frame, length: Int) {
        func need(_ count: Int) throws {
            guard bytes.count >= count else { throw CheckpointServiceError.badFrame(address: address, reason: "\(bytes.count) bytes, a frame needs \(count)") }
        }
        try need(5)
        let length = try payloadLength(head: Array(bytes[0..<5]), address: address, while: "parsing")
        try need(5 + length + 4)
        let frame = try checked(head: Array(bytes[0..<5]), payload: Array(bytes[5..<(5 + length)]),
                                crc: Array(bytes[(5 + length)..<(9 + length)]), address: address, while: "parsing")
        return (frame, 9 + length)
    }

    static func littleEndian(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8 & 0xff), UInt8(v >> 16 & 0xff), UInt8(v >> 24)] }
    static func uint32(_ b: ArraySlice<UInt8>) -> UInt32 {
        let i = b.startIndex
        return UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
    }
}

/// A blocking, framed connection to the checkpoint service (or, on the service, to a client).
/// Every wait for the socket is bounded by `timeout` seconds of no progress; errors name
/// `address`. Used from dedicated threads only.
public final class ServiceConnection {
    public let fd: Int32
    /// The other end, for messages (`HOST:PORT`).
    public let address: String
    public let timeout: Double

    /// Set once the handshake is done: from then on every frame is sealed (`FrameSeal`).
    var seal: FrameSeal?
    /// Buffers reused by every sealed frame sent and received (as large as the largest frame so far).
    private var outgoing: [UInt8] = []
    private var incoming: [UInt8] = []

    public init(fd: Int32, address: String, timeout: Double) {
        self.fd = fd; self.address = address; self.timeout = timeout
    }

    /// The same socket (a duplicated descriptor) with another timeout, sharing the seal.
    func duplicate(timeout: Double) -> ServiceConnection {
        let copy = ServiceConnection(fd: dup(fd), address: address, timeout: timeout)
        copy.seal = seal
        return copy
    }

    deinit { Glibc.close(fd) }

    /// The job-token handshake over this connection: the whole exchange must end within
    /// `seconds` from now (a peer sending a byte now and then gains nothing).
    public func transport(within seconds: Double) -> JobHandshake.Transport {
        let deadline = Deadline(end: Date(timeIntervalSinceNow: seconds), seconds: seconds)
        return JobHandshake.Transport(send: { [unowned self] in try self.write($0, while: "handshaking", until: deadline) },
                                      receive: { [unowned self] in try self.read($0, while: "handshaking", until: deadline) })
    }

    /// The end of a whole exchange, and its length for messages.
    struct Deadline { var end: Date; var seconds: Double }

    public func send(_ frame: Frame, while doing: String) throws {
        try frame.payload.withUnsafeBytes { try send(frame.type, $0, while: doing) }
    }

    /// Sends a frame of `type` carrying `payload`. Sealed: the payload is copied once, behind
    /// the frame's head, into a buffer this connection reuses, and the sealed box's bytes are
    /// sent as the cipher wrote them.
    func send(_ type: FrameType, _ payload: UnsafeRawBufferPointer, while doing: String) throws {
        guard let seal else { return try write(Frame(type, Array(payload)).bytes, while: doing) }
        let length = 5 + payload.count
        if outgoing.count < length { outgoing = [UInt8](repeating: 0, count: length) }
        let (prefix, record) = try outgoing.withUnsafeMutableBytes { buffer in
            buffer[0] = type.rawValue
            buffer.storeBytes(of: UInt32(payload.count).littleEndian, toByteOffset: 1, as: UInt32.self)
            if !payload.isEmpty { UnsafeMutableRawBufferPointer(rebasing: buffer[5..<length]).copyMemory(from: payload) }
            return try seal.sealRecord(UnsafeRawBufferPointer(rebasing: buffer[..<length]))
        }
        try prefix.withUnsafeBytes { try write($0, while: doing, more: true) }
        try record.withUnsafeBytes { try write($0, while: doing) }
    }

    public func send(_ type: FrameType, json value: some Encodable, while doing: String) throws {
        try send(Frame(type, Array(try JSONEncoder().encode(value))), while: doing)
    }

    /// The next frame; a CRC mismatch, an unknown type or an oversized length is `badFrame`.
    public func receive(while doing: String) throws -> Frame {
        if seal != nil {
            let (type, payload) = try receiveRecord(while: doing)
            return Frame(type, Array(payload))
        }
        let head = try read(5, while: doing)
        let length = try Frame.payloadLength(head: head, address: address, while: doing)
        let payload = try read(length, while: doing)
        return try Frame.checked(head: head, payload: payload, crc: read(4, while: doing), address: address, while: doing)
    }

    /// The next frame's type and payload, the payload in the buffer the cipher opened it into
    /// (no copy; for file bytes). Sealed: its length bounded, then read into a buffer this
    /// connection reuses and opened under the next nonce; one that does not open ends the
    /// connection with `badFrame` naming the peer.
    func receiveRecord(while doing: String) throws -> (type: FrameType, payload: Data) {
        guard let seal else {
            let frame = try receive(while: doing)
            return (frame.type, Data(frame.payload))
        }
        let length = Int(Frame.uint32(try read(4, while: doing)[...]))
        guard (5 + FrameSeal.tagBytes...FrameSeal.maxSealedBytes).contains(length) else {
            throw CheckpointServiceError.badFrame(address: address, reason: "a sealed frame of \(length) bytes, outside \(5 + FrameSeal.tagBytes)...\(FrameSeal.maxSealedBytes), while \(doing)")
        }
        if incoming.count < length { incoming = [UInt8](repeating: 0, count: length) }
        let opened = try incoming.withUnsafeMutableBytes { buffer in
            try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<length]), while: doing)
            return seal.openRecord(UnsafeRawBufferPointer(rebasing: buffer[..<length]))
        }
        guard let plain = opened else {
            throw CheckpointServiceError.badFrame(address: address, reason: "a frame that fails authentication while \(doing): tampered with, replayed, reordered, dropped or injected on the way; nothing of this connection is kept")
        }
        let head = [UInt8](plain.prefix(5))
        let payloadLength = Int(Frame.uint32(head[1..<5]))
        guard payloadLength == plain.count - 5, let type = FrameType(rawValue: head[0]) else {
            throw CheckpointServiceError.badFrame(address: address, reason: "a sealed frame whose type \(head[0]) or length \(payloadLength) is wrong while \(doing)")
        }
        return (type, plain.dropFirst(5))
    }

    /// Sends a one-line refusal, stops sending, and drains what the peer still sends (for at
    /// most `timeout` seconds) so that it reads the refusal rather than a reset connection.
    public func refuse(_ reason: String) {
        try? send(Frame(.error, Array(reason.utf8)), while: "refusing")
        shutdown(fd, Int32(SHUT_WR))
        var sink = [UInt8](repeating: 0, count: 64 << 10)
        let end = Date(timeIntervalSinceNow: min(timeout, 5))
        while Date() < end {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) >= 0 else { return }
            if pfd.revents != 0, recv(fd, &sink, sink.count, 0) <= 0 { return }
        }
    }

    func write(_ bytes: [UInt8], while doing: String, until deadline: Deadline? = nil) throws {
        try bytes.withUnsafeBytes { try write($0, while: doing, until: deadline) }
    }

    /// Sends all of `bytes`; `more`: more follows at once (`MSG_MORE`, so a short prefix does
    /// not leave as a packet of its own).
    func write(_ bytes: UnsafeRawBufferPointer, while doing: String, until deadline: Deadline? = nil, more: Bool = false) throws {
        var offset = 0
        while offset < bytes.count {
            try wait(for: Int16(POLLOUT), while: doing, until: deadline)
            let n = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL) | (more ? Int32(MSG_MORE) : 0))
            if n < 0, errno == EINTR || errno == EAGAIN { continue }
            guard n > 0 else { throw CheckpointServiceError.connectionLost(address: address, reason: "\(Socket.errorText()) while \(doing)") }
            offset += n
        }
    }

    func read(_ count: Int, while doing: String, until deadline: Deadline? = nil) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try read(into: $0, while: doing, until: deadline) }
        return bytes
    }

    /// Fills `buffer` from the socket.
    func read(into buffer: UnsafeMutableRawBufferPointer, while doing: String, until deadline: Deadline? = nil) throws {
        var offset = 0
        while offset < buffer.count {
            try wait(for: Int16(POLLIN), while: doing, until: deadline)
            let n = recv(fd, buffer.baseAddress! + offset, buffer.count - offset, 0)
            if n < 0, errno == EINTR || errno == EAGAIN { continue }
            guard n > 0 else {
                throw CheckpointServiceError.connectionLost(address: address, reason: n == 0 ? "closed by the other end while \(doing)" : "\(Socket.errorText()) while \(doing)")
            }
            offset += n
        }
    }

    /// Waits for `events`, at most `timeout` seconds and never past `deadline`.
    private func wait(for events: Int16, while doing: String, until deadline: Deadline? = nil) throws {
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        while true {
            let left = deadline.map { max(0, min(timeout, $0.end.timeIntervalSinceNow)) } ?? timeout
            let ready = poll(&pfd, 1, Int32((left * 1000).rounded(.up)))
            if ready > 0 { return }
            if ready < 0, errno == EINTR { continue }
            if ready == 0, let deadline, left < timeout {   // the whole exchange's deadline, not a quiet peer
                if Date() < deadline.end { continue }
                throw CheckpointServiceError.timedOut(address: address, waitingFor: doing, seconds: deadline.seconds)
            }
            if ready == 0 { throw CheckpointServiceError.timedOut(address: address, waitingFor: doing, seconds: timeout) }
            throw CheckpointServiceError.connectionLost(address: address, reason: "poll: \(Socket.errorText())")
        }
    }
}
