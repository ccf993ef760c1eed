import Foundation
import Networking

/// The sealed channel of a service connection once the handshake is done: every frame (type,
/// length, payload) is one record of the connection's `SessionSeal` (AES-256-GCM, per
/// direction keys and counter nonces, the same code that seals the training mesh), so a frame
/// flipped, replayed, reordered, dropped or injected on the path fails to open, and checkpoint
/// bytes are unreadable on the wire.
///
/// On the wire: the sealed length (UInt32 LE), the ciphertext, the 16-byte tag. Thread-safe: a
/// connection duplicated to read a refusal or a job's late reply shares its seal and counters.
final class FrameSeal: @unchecked Sendable {
    static let tagBytes = SessionSeal.tagBytes
    /// Largest sealed length accepted: a frame's head and largest payload, and the tag.
    static let maxSealedBytes = 5 + Frame.maxPayload + tagBytes

    private let channel: SessionSeal

    /// The seal of one end: the initiator sends with the initiator→acceptor key, the acceptor with the other.
    init(_ session: JobHandshake.Session, initiator: Bool) {
        channel = SessionSeal(session, initiator: initiator)
    }

    /// The bytes to send for `plaintext` (length prefix, ciphertext, tag), under the next send nonce.
    func seal(_ plaintext: [UInt8]) throws -> [UInt8] {
        Frame.littleEndian(UInt32(plaintext.count + Self.tagBytes)) + (try channel.seal(plaintext))
    }

    /// The sealed length prefix and the record (ciphertext and tag, the sealed box's own bytes)
    /// for `plaintext`, under the next send nonce: sent one after the other, with no copy.
    func sealRecord(_ plaintext: UnsafeRawBufferPointer) throws -> (prefix: [UInt8], record: Data) {
        (Frame.littleEndian(UInt32(plaintext.count + Self.tagBytes)), try channel.sealRecord(plaintext))
    }

    /// The plaintext of `sealed` (ciphertext and tag) under the next receive nonce; nil when it
    /// does not open (tampered, replayed, reordered, dropped before it, or not ours). The
    /// counter moves on either way: after a failure the connection must end.
    func open(_ sealed: [UInt8]) -> [UInt8]? { channel.open(sealed) }

    /// As `open`, the plaintext in the buffer the cipher wrote it to (no copy).
    func openRecord(_ sealed: UnsafeRawBufferPointer) -> Data? { channel.openRecord(sealed) }
}
