import Foundation

/// Zigzag sharding of a sequence over `ranks` sequence ranks: a sample of `length` tokens is cut
/// into 2·ranks chunks of length / (2·ranks) tokens and rank r holds chunks r and 2·ranks − 1 − r,
/// so every rank carries the same share of causal work (an early chunk and a late one).
public enum SequenceSharding {
    /// Why `length` cannot be sharded over `ranks` ranks, or nil when it can.
    public static func problem(length: Int, ranks: Int) -> String? {
        guard ranks > 1 else { return nil }
        return length % (2 * ranks) == 0 ? nil
            : "data.seq_len = \(length) does not split into 2 × parallel.sequence = \(2 * ranks) equal chunks; choose a multiple of \(2 * ranks)"
    }

    /// Global positions (within a sample) of rank `rank`'s tokens, in the order the rank holds them.
    public static func positions(length: Int, ranks: Int, rank: Int) -> [Int] {
        guard ranks > 1 else { return Array(0..<length) }
        precondition(problem(length: length, ranks: ranks) == nil, problem(length: length, ranks: ranks) ?? "")
        let chunk = length / (2 * ranks)
        let first = rank * chunk, second = (2 * ranks - 1 - rank) * chunk
        return Array(first..<(first + chunk)) + Array(second..<(second + chunk))
    }
}

/// How attention runs when the sequence is sharded (config key `parallel.sequence_mode`).
public enum SequenceParallelMode: String, CaseIterable, Equatable, Sendable {
    /// K/V travel around the ring of sequence ranks in small units, merged into each rank's
    /// output inside the flash kernel's online softmax.
    case ring
    /// All-to-all from sequence shards to head shards, attention over the whole sequence, and back.
    case ulysses
}
