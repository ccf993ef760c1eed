import Checkpointing
import Collectives
import Models
import TensorCore

/// Moves expert-sharded parameters and their AdamW moments from rank 0, which reads the
/// checkpoint being resumed as whole tensors, to the ranks holding them, whatever the layout
/// it was written on. (Saving needs no transfer: each expert's owner writes it.)
///
/// The ranks of rank 0's expert group (expert replica 0) hold every expert once between them;
/// the other replicas hold the same values. Resuming, each asks rank 0 for its experts by name,
/// then hands them to its replicas with a broadcast over `replicas(ofShardsAlong: .expert)`.
/// Nothing moves when the expert axis has one rank.
public struct ExpertShardTransfer {
    let grid: ProcessGrid
    let parameters: ParameterSet
    let optimizer: Optimizer
    /// Global shape of every parameter, by name.
    let shapes: [String: [Int]]

    static let namesTag = MessageTag.expertShardNames.tag(), valuesTag = MessageTag.expertShardValues.tag()

    public init(grid: ProcessGrid, parameters: ParameterSet, optimizer: Optimizer, global: [ParameterDeclaration]) {
        self.grid = grid
        self.parameters = parameters
        self.optimizer = optimizer
        shapes = Dictionary(uniqueKeysWithValues: global.map { ($0.name, $0.shape) })
    }

    private var active: Bool { grid.size(of: .expert) > 1 }
    private var sharded: [ParameterSet.Entry] { parameters.entries.filter { $0.placement.shardAxis == .expert } }

    /// After rank 0 loaded its own parameters and moments from `contents` and the world
    /// received rank 0's buffers: gives every rank its own experts. `contents` on rank 0 only.
    /// `moments`: the buffers the moments were loaded into (default: the optimizer's own).
    public func scatterFromReader(_ contents: CheckpointContents?, moments: [FloatBuffer]? = nil) throws {
        guard active else { return }
        let buffers = [parameters.values] + (moments ?? optimizer.buffers)
        let replicas = grid.replicas(ofShardsAlong: .expert)
        let mine = sharded
        var packed = pack(mine, buffers)
        if replicas.rank == 0 {
            let comm = grid.communicator(for: .expert)
            if comm.rank == 0 {
                guard let contents else { preconditionFailure("ExpertShardTransfer: rank 0 resumes without contents") }
                for target in 1..<comm.size {
                    let names = try receiveNames(from: target, comm: comm)
                    var floats: [Float] = []
                    for name in names {
                        for tensor in [contents.model[name], contents.optimizer[name + ".exp_avg"], contents.optimizer[name + ".exp_avg_sq"]] {
                            floats += tensor!.scalars
                        }
                    }
                    try send(floats, to: target, comm: comm)
                }
            } else {
                try sendNames(mine.map(\.name), to: 0, comm: comm)
                try packed.withUnsafeMutableBytes { try comm.receive($0, from: 0, tag: Self.valuesTag) }
            }
        }
        try packed.withUnsafeMutableBytes { try replicas.broadcast($0, root: 0) }
        var offset = 0
        for e in mine {
            for buffer in buffers {
                (buffer.pointer + e.offset).update(from: Array(packed[offset..<(offset + e.count)]), count: e.count)
                offset += e.count
            }
        }
    }

    /// Each entry's values, exp_avg and exp_avg_sq, entry after entry.
    private func pack(_ entries: [ParameterSet.Entry], _ buffers: [FloatBuffer]) -> [Float] {
        entries.flatMap { e in buffers.flatMap { Array(UnsafeBufferPointer(start: $0.pointer + e.offset, count: e.count)) } }
    }

    private func send(_ floats: [Float], to rank: Int, comm: Communicator) throws {
        try floats.withUnsafeBytes { try comm.send($0, to: rank, tag: Self.valuesTag) }
    }

    private func sendNames(_ names: [String], to rank: Int, comm: Communicator) throws {
        let bytes = Array(names.joined(separator: "\n").utf8)
        try withUnsafeBytes(of: Int64(bytes.count)) { try comm.send($0, to: rank, tag: Self.namesTag) }
        try bytes.withUnsafeBytes { try comm.send($0, to: rank, tag: Self.namesTag) }
    }

    private func receiveNames(from rank: Int, comm: Communicator) throws -> [String] {
        var length: Int64 = 0
        try withUnsafeMutableBytes(of: &length) { try comm.receive($0, from: rank, tag: Self.namesTag) }
        var bytes = [UInt8](repeating: 0, count: Int(length))
        try bytes.withUnsafeMutableBytes { try comm.receive($0, from: rank, tag: Self.namesTag) }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
    }
}
