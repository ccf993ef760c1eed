import Crypto
import Foundation

/// Mutual proof of the job token over a fresh connection, without the token ever travelling:
/// each side sends a fresh random nonce, and each proves it knows the token with
/// HMAC-SHA256(token, label, role, both nonces, both identities). The acceptor (the side that
/// listens, which anyone can reach) sends its proof only after the initiator's has verified,
/// so a stranger who connects learns nothing about the token (no offline oracle). One side has
/// to prove first: a stranger who gets a client to dial it sees the initiator's proof, which
/// is why tokens must be strong (`JobToken.validate`: 128 bits); a fresh nonce on each side
/// means no proof can be replayed.
///
/// Wire format (all lengths little-endian):
/// 1. initiator → acceptor: `TSHK`, version, nonce (32 bytes), identity length (UInt16), identity
/// 2. acceptor → initiator: `TSHK`, version, nonce (32 bytes), identity length, identity
/// 3. initiator → acceptor: proof (32 bytes)
/// 4. acceptor → initiator: verdict (1 = accepted, 0 = your proof was wrong), proof (32 bytes, zero when refusing)
///
/// Identities are free text ("rank 3 of 4 10.0.0.2 41234", "tessera checkpoint service") and
/// are covered by both proofs, so what a peer claims about itself is authenticated too.
/// Synchronous: run it on a dedicated thread, never on the concurrency pool.
public struct JobHandshake {
    public static let magic: [UInt8] = Array("TSHK".utf8)
    public static let version: UInt8 = 3   // 3: sealed records are AES-256-GCM (2: ChaCha20-Poly1305)
    public static let nonceBytes = 32
    public static let proofBytes = 32
    /// Longest identity accepted; a stranger cannot make us allocate more.
    public static let maxIdentityBytes = 1024

    /// Which end of the connection: the one that dialed, or the one that accepted.
    public enum Role: String, Sendable { case initiator, acceptor }

    /// How the handshake moves bytes: `send` writes all of them, `receive(n)` returns exactly
    /// `n` bytes or throws (each with its own timeout).
    public struct Transport {
        public var send: ([UInt8]) throws -> Void
        public var receive: (Int) throws -> [UInt8]

        public init(send: @escaping ([UInt8]) throws -> Void, receive: @escaping (Int) throws -> [UInt8]) {
            self.send = send; self.receive = receive
        }
    }

    private let key: SymmetricKey

    /// A handshake proving knowledge of `token` (the job token; never sent).
    public init(token: String) {
        key = SymmetricKey(data: Array(token.utf8))
    }

    /// The dialing side. Returns the acceptor's identity and the session keys both ends derive
    /// (`Session`) once it has proved the token. Throws `HandshakeError` when the peer is not a
    /// Tessera handshake or does not know the token (then it is told so and learns nothing), or
    /// the transport's error.
    @discardableResult
    public func initiate(identity: String, over transport: Transport) throws -> Session {
        let mine = Self.nonce()
        let myIdentity = try Self.identityBytes(identity)
        try transport.send(Self.magic + [Self.version] + mine + Self.lengthPrefixed(myIdentity))
        let (theirs, theirIdentity) = try Self.readGreeting(transport)
        let claimed = String(decoding: theirIdentity, as: UTF8.self)
        let transcript = Self.transcript(initiatorNonce: mine, acceptorNonce: theirs, initiator: myIdentity, acceptor: theirIdentity)
        try transport.send(mac(role: .initiator, transcript))
        let reply = try transport.receive(1 + Self.proofBytes)
        guard reply[0] == 1 else { throw HandshakeError.peerRefusedOurProof(peer: claimed) }
        guard isValid(Array(reply[1...]), role: .acceptor, transcript) else { throw HandshakeError.wrongToken(peer: claimed) }
        return session(peer: claimed, transcript)
    }

    /// The accepting side. Returns the initiator's identity and the session keys once it has
    /// proved the token.
    @discardableResult
    public func accept(identity: String, over transport: Transport) throws -> Session {
        let (theirs, theirIdentity) = try Self.readGreeting(transport)
        let mine = Self.nonce()
        let myIdentity = try Self.identityBytes(identity)
        let transcript = Self.transcript(initiatorNonce: theirs, acceptorNonce: mine, initiator: theirIdentity, acceptor: myIdentity)
        try transport.send(Self.magic + [Self.version] + mine + Self.lengthPrefixed(myIdentity))
        let proof = try transport.receive(Self.proofBytes)
        let claimed = String(decoding: theirIdentity, as: UTF8.self)
        guard isValid(proof, role: .initiator, transcript) else {
            try? transport.send([0] + [UInt8](repeating: 0, count: Self.proofBytes))   // no proof of ours to a stranger
            throw HandshakeError.wrongToken(peer: claimed)
        }
        try transport.send([1] + mac(role: .acceptor, transcript))
        return session(peer: claimed, transcript)
    }

    /// What a completed handshake leaves: the peer's (authenticated) identity and one key per
    /// direction, HKDF-SHA256(token, salt: SHA-256 of the transcript, which holds both fresh
    /// nonces and both identities), so every connection has its own keys and a key never
    /// serves both directions.
    public struct Session {
        public let peer: String
        public let initiatorToAcceptor: SymmetricKey
        public let acceptorToInitiator: SymmetricKey
    }

    private func session(peer: String, _ transcript: [UInt8]) -> Session {
        let salt = Array(SHA256.hash(data: transcript))
        func derive(_ label: String) -> SymmetricKey {
            HKDF<SHA256>.deriveKey(inputKeyMaterial: key, salt: salt, info: Array("tessera-seal-v2 \(label)".utf8), outputByteCount: 32)
        }
        return Session(peer: peer, initiatorToAcceptor: derive("initiator->acceptor"), acceptorToInitiator: derive("acceptor->initiator"))
    }

    private func mac(role: Role, _ transcript: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Array(role.rawValue.utf8) + transcript, using: key))
    }

    private func isValid(_ proof: [UInt8], role: Role, _ transcript: [UInt8]) -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(proof, authenticating: Array(role.rawValue.utf8) + transcript, using: key)
    }

    static func transcript(initiatorNonce: [UInt8], acceptorNonce: [UInt8], initiator: [UInt8], acceptor: [UInt8]) -> [UInt8] {
        Array("|tessera-handshake-v2|".utf8) + initiatorNonce + acceptorNonce + lengthPrefixed(initiator) + lengthPrefixed(acceptor)
    }

    static func nonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()   // getrandom(2) on Linux
        return (0..<nonceBytes).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    static func identityBytes(_ identity: String) throws -> [UInt8] {
        let bytes = Array(identity.utf8)
        guard bytes.count <= maxIdentityBytes else { throw HandshakeError.identityTooLong(bytes: bytes.count) }
        return bytes
    }

    static func lengthPrefixed(_ bytes: [UInt8]) -> [UInt8] {
        [UInt8(bytes.count & 0xff), UInt8(bytes.count >> 8)] + bytes
    }

    /// Magic, version, nonce and identity; anything else is a stranger.
    static func readGreeting(_ transport: Transport) throws -> (nonce: [UInt8], identity: [UInt8]) {
        let head = try transport.receive(magic.count + 1 + nonceBytes + 2)
        guard Array(head[0..<magic.count]) == magic else {
            throw HandshakeError.notAHandshake(firstBytes: Array(head.prefix(8)))
        }
        guard head[magic.count] == version else { throw HandshakeError.unsupportedVersion(head[magic.count]) }
        let nonce = Array(head[(magic.count + 1)..<(magic.count + 1 + nonceBytes)])
        let length = Int(head[head.count - 2]) | Int(head[head.count - 1]) << 8
        guard length <= maxIdentityBytes else { throw HandshakeError.identityTooLong(bytes: length) }
        return (nonce, try transport.receive(length))
    }
}

/// Why a handshake failed; the connection must then be closed.
public enum HandshakeError: Error, Equatable, CustomStringConvertible {
    /// The peer's first bytes are not a Tessera handshake (a stray client, a port scanner).
    case notAHandshake(firstBytes: [UInt8])
    case unsupportedVersion(UInt8)
    /// The peer's proof does not match our token: its job token differs.
    case wrongToken(peer: String)
    /// The peer found our proof wrong and refused: its job token differs.
    case peerRefusedOurProof(peer: String)
    case identityTooLong(bytes: Int)

    public var description: String {
        switch self {
        case let .notAHandshake(first):
            return "not a Tessera handshake (first bytes \(first.map { String(format: "%02x", $0) }.joined()))"
        case let .unsupportedVersion(v):
            return "handshake version \(v), this build speaks \(JobHandshake.version); run the same Tessera build everywhere"
        case let .wrongToken(peer):
            return "'\(peer)' did not prove the job token: its TESSERA_JOB_TOKEN differs from ours"
        case let .peerRefusedOurProof(peer):
            return "'\(peer)' refused our proof of the job token: its TESSERA_JOB_TOKEN differs from ours"
        case let .identityTooLong(bytes):
            return "handshake identity of \(bytes) bytes is longer than \(JobHandshake.maxIdentityBytes)"
        }
    }
}

extension JobHandshake.Transport {
    /// A blocking socket as a transport; each read and write must finish by `deadline`.
    public static func socket(_ fd: Int32, deadline: Date) -> JobHandshake.Transport {
        JobHandshake.Transport(send: { try Socket.writeAll(fd, $0, deadline: deadline) },
                               receive: { try Socket.readExactly(fd, $0, deadline: deadline) })
    }
}
