import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Deterministic mutations of valid inputs for bounded fuzz tests (fixed seed: a failure
/// reproduces). SplitMix64 drives byte flips, insertions, deletions, truncations, and the
/// replacement of numbers in text with values a hostile peer would send (2^40, -1, Int.max,
/// 1e400, 20 digits, ...).
public struct ByteMutator {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(1, n))) }

    /// Numbers hostile input carries, as text.
    public static let hostileNumbers = ["1099511627776", "-1", "0", "9223372036854775807", "-9223372036854775808", "18446744073709551616",
                                        "1e400", "4294967296", "4294967301", "65537", "1.5", "99999999999999999999999", "2147483648", "null", "\"7\""]

    /// Numbers hostile input carries, as little-endian fields of `width` bytes.
    public mutating func hostileInteger(width: Int) -> [UInt8] {
        let values: [UInt64] = [0, 1, UInt64.max, UInt64(Int64.max), 1 << 40, 1 << 32, (1 << 32) - 1, 1 << 31, 16 << 20, (16 << 20) + 1, next()]
        let value = values[below(values.count)]
        return (0..<width).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
    }

    /// One to four random mutations of `input`.
    public mutating func mutate(_ input: [UInt8]) -> [UInt8] {
        var bytes = input
        for _ in 0...below(4) {
            switch below(7) {
            case 0 where !bytes.isEmpty: bytes[below(bytes.count)] ^= UInt8(truncatingIfNeeded: 1 << below(8))
            case 1 where !bytes.isEmpty: bytes[below(bytes.count)] = UInt8(truncatingIfNeeded: next())
            case 2: bytes.insert(contentsOf: (0..<(1 + below(8))).map { _ in UInt8(truncatingIfNeeded: next()) }, at: below(bytes.count + 1))
            case 3 where !bytes.isEmpty:
                let start = below(bytes.count)
                bytes.removeSubrange(start..<min(bytes.count, start + 1 + below(16)))
            case 4: bytes = Array(bytes.prefix(below(bytes.count + 1)))
            case 5: bytes = replacingANumber(bytes)
            default:
                if bytes.count >= 8 {
                    let at = below(bytes.count - 7)
                    bytes.replaceSubrange(at..<(at + 8), with: hostileInteger(width: 8))
                }
            }
        }
        return bytes
    }

    /// `text` with one of its runs of digits replaced by a hostile number.
    public mutating func replacingANumber(_ text: [UInt8]) -> [UInt8] {
        var runs: [Range<Int>] = []
        var i = 0
        while i < text.count {
            if (0x30...0x39).contains(text[i]) {
                let start = i
                while i < text.count, (0x30...0x39).contains(text[i]) { i += 1 }
                runs.append(start..<i)
            } else { i += 1 }
        }
        guard !runs.isEmpty else { return text }
        var out = text
        out.replaceSubrange(runs[below(runs.count)], with: Array(Self.hostileNumbers[below(Self.hostileNumbers.count)].utf8))
        return out
    }
}

/// The process's peak resident memory in bytes (getrusage): a fuzz test checks that its
/// cases together grew it by less than a budget.
public func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return usage.ru_maxrss * 1024
}
