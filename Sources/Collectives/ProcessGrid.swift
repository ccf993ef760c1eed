/// The named axes of a parallel layout.
public enum GridAxis: String, CaseIterable, Sendable, CustomStringConvertible {
    /// Ranks that take different samples of the global batch.
    case data
    /// Ranks that split the positions of the same samples.
    case sequence
    /// Ranks of one data group that hold different experts (carved from the data axis).
    case expert

    public var description: String { rawValue }
}

/// Sizes of the axes: `world = data × sequence`, and `expert` divides `data`.
public struct GridLayout: Equatable, Sendable, CustomStringConvertible {
    public var data: Int
    public var sequence: Int
    public var expert: Int

    public init(data: Int, sequence: Int = 1, expert: Int = 1) {
        self.data = data; self.sequence = sequence; self.expert = expert
    }

    public func size(of axis: GridAxis) -> Int {
        switch axis {
        case .data: return data
        case .sequence: return sequence
        case .expert: return expert
        }
    }

    public var worldSize: Int { data * sequence }

    public var description: String { "data \(data) × sequence \(sequence)" + (expert > 1 ? " (expert \(expert))" : "") }

    /// Everything wrong with this layout for `worldSize` ranks, each naming its numbers; empty
    /// when it fits.
    public func problems(worldSize ranks: Int) -> [String] {
        var out: [String] = []
        for axis in GridAxis.allCases where size(of: axis) < 1 { out.append("parallel.\(axis) = \(size(of: axis)) must be at least 1") }
        guard out.isEmpty else { return out }
        if worldSize != ranks {
            out.append("parallel.data = \(data) × parallel.sequence = \(sequence) = \(worldSize) does not match the \(ranks) ranks started")
        }
        if data % expert != 0 { out.append("parallel.expert = \(expert) does not divide parallel.data = \(data)") }
        return out
    }
}

/// The named axes of a parallel layout and a communicator per axis.
///
/// Ranks of one sequence group are consecutive in the world (on a cluster they share a node):
/// world rank = dataIndex × sequence + sequenceIndex. The expert axis is carved from the data
/// axis: dataIndex = expertReplica × expert + expertIndex, so the ranks of one expert group are
/// consecutive data ranks. All communicators are split at construction (every rank in the same
/// order), so using them later needs no further agreement.
public final class ProcessGrid {
    public let world: Communicator
    public let layout: GridLayout
    private let communicators: [GridAxis: Communicator]
    /// Ranks that hold the same expert shard (same expert index, every replica and sequence index).
    private let expertShardReplicas: Communicator

    /// Throws `CollectiveError.invalidArgument` naming every number when `layout` does not fit
    /// `world`.
    public init(world: Communicator, layout: GridLayout) throws {
        let problems = layout.problems(worldSize: world.size)
        guard problems.isEmpty else {
            throw CollectiveError.invalidArgument("parallel layout: " + problems.joined(separator: "; ")
                + "; choose parallel.data × parallel.sequence = \(world.size) with parallel.expert dividing parallel.data")
        }
        self.world = world
        self.layout = layout
        let (data, sequence, expert) = (world.rank / layout.sequence, world.rank % layout.sequence, (world.rank / layout.sequence) % layout.expert)
        let replica = data / layout.expert
        func group(size: Int, color: Int, key: Int) throws -> Communicator {
            size == world.size ? world : try world.split(color: color, key: key)
        }
        var communicators: [GridAxis: Communicator] = [:]
        communicators[.data] = try group(size: layout.data, color: sequence, key: data)
        communicators[.sequence] = try group(size: layout.sequence, color: data, key: sequence)
        communicators[.expert] = try group(size: layout.expert, color: replica * layout.sequence + sequence, key: expert)
        self.communicators = communicators
        expertShardReplicas = try group(size: world.size / layout.expert, color: expert, key: replica * layout.sequence + sequence)
    }

    /// The layout `data × sequence` without experts.
    public convenience init(world: Communicator, data: Int, sequence: Int = 1) throws {
        try self.init(world: world, layout: GridLayout(data: data, sequence: sequence))
    }

    /// Ranks that differ only in their index along `axis`, ordered by that index.
    public func communicator(for axis: GridAxis) -> Communicator { communicators[axis]! }

    public func size(of axis: GridAxis) -> Int { layout.size(of: axis) }

    /// This rank's index along `axis`.
    public func index(along axis: GridAxis) -> Int { communicator(for: axis).rank }

    /// The ranks holding the same copy of a tensor that is sharded along `axis` (nil: a
    /// replicated tensor, held by every rank): its gradient is summed over these.
    public func replicas(ofShardsAlong axis: GridAxis?) -> Communicator {
        switch axis {
        case nil: return world
        case .data?: return communicator(for: .sequence)
        case .sequence?: return communicator(for: .data)
        case .expert?: return expertShardReplicas
        }
    }

    // Shorthands for the two axes every layout has.
    public var data: Communicator { communicator(for: .data) }
    public var sequence: Communicator { communicator(for: .sequence) }
    public var dataSize: Int { layout.data }
    public var sequenceSize: Int { layout.sequence }
    public var dataIndex: Int { index(along: .data) }
    public var sequenceIndex: Int { index(along: .sequence) }
}
