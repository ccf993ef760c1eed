import Foundation

/// The job token: the shared secret that `JobHandshake` proves. Anyone who can make a Tessera
/// process run a handshake with them (listen where a client dials, or dial a listener) sees one
/// HMAC over values they know and can test guesses offline, so the token must be too strong to
/// guess: at least `minimumBits` of entropy. `tessera token` prints a fresh one.
public enum JobToken {
    /// Entropy a token must have at least (a guess per nanosecond for a billion years finds 2^85).
    public static let minimumBits = 128
    /// Random bytes of a generated token (hex: twice as many characters).
    public static let generatedBytes = 32
    /// How to make a good token, for error messages.
    public static let howToMakeOne = "make one with `tessera token` (or `openssl rand -hex 32`)"

    /// A fresh token: `generatedBytes` bytes from the system's generator (getrandom(2)), in hex.
    public static func generate() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<generatedBytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    /// A generous upper bound of the token's entropy in bits, from its length and the classes
    /// of characters it uses: hex digits count 4 bits each; otherwise log2 of the size of the
    /// classes used (digits 10, lower 26, upper 26, other printable 33) per character, and a
    /// run of one character counts at most `maxRunCounted` characters. (Discounting every third
    /// repeat, as before, refused about one random 32-hex-digit token in nine, such as
    /// `openssl rand -hex 16` gives: three equal digits in a row are common by chance; eight are not.)
    /// Longest run of one character that counts in full (a run of 8 equal hex digits happens
    /// in about one random 32-digit token in 10 million).
    static let maxRunCounted = 7

    public static func estimatedBits(_ token: String) -> Double {
        let bytes = Array(token.utf8)
        guard !bytes.isEmpty else { return 0 }
        var alphabet = 0
        let isHex = bytes.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) } ||
                    bytes.allSatisfy { (0x30...0x39).contains($0) || (0x41...0x46).contains($0) }
        if isHex { alphabet = 16 } else {
            if bytes.contains(where: { (0x30...0x39).contains($0) }) { alphabet += 10 }
            if bytes.contains(where: { (0x61...0x7a).contains($0) }) { alphabet += 26 }
            if bytes.contains(where: { (0x41...0x5a).contains($0) }) { alphabet += 26 }
            if bytes.contains(where: { !(0x30...0x39).contains($0) && !(0x61...0x7a).contains($0) && !(0x41...0x5a).contains($0) }) { alphabet += 33 }
        }
        var counted = 0, run = 0
        for (i, byte) in bytes.enumerated() {
            run = i > 0 && bytes[i - 1] == byte ? run + 1 : 1
            if run <= maxRunCounted { counted += 1 }
        }
        return Double(counted) * log2(Double(alphabet))
    }

    /// Throws `weakToken` unless `token` has at least `minimumBits` (32 hex digits, or ~22
    /// random letters, digits and symbols). `source` names where it came from (`TESSERA_JOB_TOKEN`).
    public static func validate(_ token: String, source: String) throws {
        let bits = estimatedBits(token)
        guard bits >= Double(minimumBits) else { throw JobTokenError.weak(source: source, bits: Int(bits)) }
    }
}

/// A job token too weak to keep strangers out.
public enum JobTokenError: Error, Equatable, CustomStringConvertible {
    case weak(source: String, bits: Int)

    public var description: String {
        switch self {
        case let .weak(source, bits):
            return "the job token in \(source) has at most \(bits) bits of entropy, under the \(JobToken.minimumBits) a token needs (at least 32 hex digits); \(JobToken.howToMakeOne)"
        }
    }
}
