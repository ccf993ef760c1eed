/// Every point-to-point message tag Tessera uses, in one table: a new use takes a free block here,
/// and `MessageTagTests` checks that no two blocks overlap. Components' tags are non-negative
/// (`Communicator.send(_:to:tag:)`); the TCP backend's own frames use the negative ones.
/// Component tags stay within the 32,767 MPI guarantees. A block kind numbers its messages
/// (ring attention: ((batch element, unit), step)) modulo `blockSize`: messages of one pair of
/// ranks with one tag arrive in order on every backend, so tags that wrap around still match.
public enum MessageTag: Int, CaseIterable, Sendable {
    /// Ring attention, forward: a unit of K/V to the next rank (a block, by message number).
    case ringForward = 0x1000
    /// Ring attention, backward: a unit of K/V to the next rank.
    case ringBackward = 0x2000
    /// Ring attention, backward: a unit's dK/dV following it around the ring.
    case ringGradients = 0x3000
    /// Expert-shard transfer of a checkpoint (rank 0 ↔ expert ranks): tensor names, then values.
    case expertShardNames = 0x5E01, expertShardValues = 0x5E02
    /// TCP backend: collective traffic (user tags are non-negative).
    case tcpCollective = -1
    /// TCP backend: the best-effort notice a rank sends when a transfer fails, naming its cause.
    case tcpAbort = -0x8000_0000_0000_0000   // Int64.min
    /// TCP backend: the notice a rank sends when its deadline passes (the ranks it waits for).
    case tcpWaiting = -0x7FFF_FFFF_FFFF_FFFF   // Int64.min + 1

    /// Tags of a block kind: one per message number modulo this.
    public static let blockSize = 0x1000

    /// Whether the kind spans a block of `blockSize` tags (one per message number).
    public var isBlock: Bool { [.ringForward, .ringBackward, .ringGradients].contains(self) }
    /// The tags this kind may use.
    public var tags: ClosedRange<Int> { rawValue...(isBlock ? rawValue + Self.blockSize - 1 : rawValue) }

    /// The tag of message number `message` of a block kind (wrapping within the block); the tag
    /// itself for a single one.
    public func tag(_ message: Int = 0) -> Int { isBlock ? rawValue + message % Self.blockSize : rawValue }
}
