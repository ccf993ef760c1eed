import CollectivesTCP
import Crypto
import Foundation

/// The sealed channel of a service connection once the handshake is done: every frame (type,
/// length, payload) is encrypted and authenticated with ChaCha20-Poly1305 under the session key
/// of its direction (`JobHandshake.Session`), with a nonce that counts that direction's frames
/// (0, 1, 2, ...). A frame flipped, replayed, reordered, dropped or injected on the path fails
/// to open, and checkpoint bytes are unreadable on the wire.
///
/// On the wire: the sealed length (UInt32 LE), the ciphertext, the 16-byte tag. Thread-safe: a
/// connection duplicated to read a refusal or a job's late reply shares its seal and counters.
final class FrameSeal: @unchecked Sendable {
    static let tagBytes = 16
    /// Largest sealed length accepted: a frame's head and largest payload, and the tag.
    static let maxSealedBytes = 5 + Frame.maxPayload + tagBytes

    private let sendKey: SymmetricKey
    private let receiveKey: SymmetricKey
    private let lock = NSLock()
    private var sent: UInt64 = 0
    private var received: UInt64 = 0

    /// The seal of one end: the initiator sends with the initiator→acceptor key, the acceptor with the other.
    init(_ session: JobHandshake.Session, initiator: Bool) {
        sendKey = initiator ? session.initiatorToAcceptor : session.acceptorToInitiator
        receiveKey = initiator ? session.acceptorToInitiator : session.initiatorToAcceptor
    }

    /// The bytes to send for `plaintext` (length prefix, ciphertext, tag), under the next send nonce.
    func seal(_ plaintext: [UInt8]) throws -> [UInt8] {
        lock.lock()
        let counter = sent
        sent += 1
        lock.unlock()
        let box = try ChaChaPoly.seal(plaintext, using: sendKey, nonce: Self.nonce(counter))
        return Frame.littleEndian(UInt32(plaintext.count + Self.tagBytes)) + Array(box.ciphertext) + Array(box.tag)
    }

    /// The plaintext of `sealed` (ciphertext and tag) under the next receive nonce; nil when it
    /// does not open (tampered, replayed, reordered, dropped before it, or not ours). The
    /// counter moves on either way: after a failure the connection must end.
    func open(_ sealed: [UInt8]) -> [UInt8]? {
        lock.lock()
        let counter = received
        received += 1
        lock.unlock()
        guard sealed.count >= Self.tagBytes,
              let box = try? ChaChaPoly.SealedBox(nonce: Self.nonce(counter), ciphertext: sealed.dropLast(Self.tagBytes), tag: sealed.suffix(Self.tagBytes)),
              let plaintext = try? ChaChaPoly.open(box, using: receiveKey) else { return nil }
        return Array(plaintext)
    }

    /// 12 bytes: four zero bytes, then the frame counter (UInt64 LE).
    static func nonce(_ counter: UInt64) -> ChaChaPoly.Nonce {
        try! ChaChaPoly.Nonce(data: [0, 0, 0, 0] + (0..<8).map { UInt8(truncatingIfNeeded: counter >> (8 * UInt64($0))) })
    }
}
