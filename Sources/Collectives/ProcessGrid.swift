/// The named axes of a parallel layout and their sub-communicators.
///
/// `world.size = data × sequence`. Ranks of one sequence group are consecutive in the world
/// (so on a cluster they share a node): world rank = dataIndex × sequence + sequenceIndex.
public final class ProcessGrid {
    public let world: Communicator
    public let dataSize: Int
    public let sequenceSize: Int
    /// This rank's coordinates.
    public let dataIndex: Int
    public let sequenceIndex: Int
    /// Ranks with the same sequence index (gradient averaging runs here).
    public let data: Communicator
    /// Ranks with the same data index (they share samples and split their positions).
    public let sequence: Communicator

    public init(world: Communicator, data: Int, sequence: Int = 1) throws {
        guard data >= 1, sequence >= 1, data * sequence == world.size else {
            throw CollectiveError.invalidArgument(
                "parallel layout data=\(data) × sequence=\(sequence) = \(data * sequence) does not match the \(world.size) ranks started; set parallel.data × parallel.sequence = \(world.size)")
        }
        self.world = world
        dataSize = data
        sequenceSize = sequence
        dataIndex = world.rank / sequence
        sequenceIndex = world.rank % sequence
        if world.size == 1 {
            self.data = world
            self.sequence = world
        } else {
            self.data = data == world.size ? world : try world.split(color: sequenceIndex, key: dataIndex)
            self.sequence = sequence == world.size ? world : try world.split(color: dataIndex, key: sequenceIndex)
        }
    }
}
