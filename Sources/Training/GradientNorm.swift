import Collectives
import Kernels
import Models

/// The global gradient norm for clipping, read from placement: a replicated parameter is
/// counted once (every rank holds the same, already reduced gradient), a sharded one once
/// per slice (its slices' squares are summed over the ranks along its axis).
public enum GradientNorm {
    /// √(Σ over the whole model of g²). Every rank returns the same value. Collective on the
    /// shard axes of sharded parameters (none today: then no communication).
    public static func global(_ parameters: ParameterSet, grid: ProcessGrid) throws -> Double {
        var replicated = 0.0
        var sharded: [GridAxis: Double] = [:]
        // Contiguous runs of the same placement kind are summed in one pass.
        var runStart = 0
        let entries = parameters.entries
        for (i, e) in entries.enumerated() {
            let next = i + 1 < entries.count ? entries[i + 1].placement.shardAxis : nil
            guard i + 1 == entries.count || next != e.placement.shardAxis else { continue }
            let start = entries[runStart].offset
            let squares = GradientClipping.sumOfSquares(parameters.gradients.pointer + start, count: e.range.upperBound - start)
            if let axis = e.placement.shardAxis { sharded[axis, default: 0] += squares } else { replicated += squares }
            runStart = i + 1
        }
        var total = replicated
        for axis in GridAxis.allCases {
            guard let local = sharded[axis] else { continue }
            total += Double(try grid.communicator(for: axis).allReduce(Float(local), op: .sum))
        }
        return total.squareRoot()
    }

    /// The same norm under `parallel.zero` = 2, where each rank holds only its owned pieces of
    /// the summed gradients: their squares summed over the world (each piece of each tensor
    /// slice is owned by exactly one rank of the slice's replicas).
    static func owned(_ partition: ZeroPartition, world: Communicator) throws -> Double {
        Double(try world.allReduce(Float(partition.ownedSquares()), op: .sum)).squareRoot()
    }
}
