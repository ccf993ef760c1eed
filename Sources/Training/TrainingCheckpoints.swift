import Checkpointing
import Collectives
import Foundation
import Models
import TensorCore

/// Saving and resuming a run's checkpoints: rank 0 writes and reads, everyone else receives by
/// broadcast, so other nodes need no shared disk.
struct TrainingCheckpoints {
    let store: CheckpointStore
    let world: Communicator
    let keep: Int

    var isWriter: Bool { world.rank == 0 }

    /// Each parameter's place in the whole model, from its placement.
    static func shards(of parameters: ParameterSet) -> [String: TensorShard] {
        Dictionary(uniqueKeysWithValues: parameters.entries.map { e in
            (e.name, TensorShard(globalShape: e.placement.globalShape(local: e.shape), offset: e.placement.globalOffset(local: e.shape),
                                 axis: e.placement.shardAxis?.rawValue))
        })
    }

    /// Rank 0 writes `contents()`; the barriers make every rank reach the same step.
    func save(_ contents: () -> CheckpointContents) throws -> URL? {
        try world.barrier()
        var written: URL?
        if isWriter {
            written = try store.write(contents())
            store.prune(keep: keep)
        }
        try world.barrier()
        return written
    }

    /// The newest complete checkpoint's contents on rank 0 (nil elsewhere and when there is
    /// none). `check` runs on rank 0 and may throw; any failure reaches every rank as the same
    /// error.
    func loadLatest(check: (URL, CheckpointContents) throws -> Void) throws -> (found: Bool, contents: CheckpointContents?) {
        var failure: Error?
        var contents: CheckpointContents?
        if isWriter, let latest = store.latest() {
            do {
                let loaded = try CheckpointStore.read(latest)
                try check(latest, loaded)
                contents = loaded
            } catch {
                failure = error
            }
        }
        let problem = failure.map { "\($0)" } ?? ""
        let message = String(decoding: try world.broadcastBytes(Array(problem.utf8), root: 0), as: UTF8.self)
        if let failure { throw failure }   // rank 0 keeps its typed error
        if !message.isEmpty { throw TrainingError.resumeFailed(message: message) }
        var found: [Int64] = [contents == nil ? 0 : 1]
        try found.withUnsafeMutableBytes { try world.broadcast($0, root: 0) }
        return (found[0] == 1, contents)
    }

    /// Copies rank 0's `buffers` to every rank.
    func broadcast(_ buffers: [FloatBuffer]) throws {
        for buffer in buffers {
            try world.broadcast(UnsafeMutableRawBufferPointer(start: buffer.pointer, count: buffer.count * 4), root: 0)
        }
    }

    /// Copies rank 0's integers to every rank.
    func broadcast(_ values: [Int]) throws -> [Int] {
        var wide = values.map(Int64.init)
        try wide.withUnsafeMutableBytes { try world.broadcast($0, root: 0) }
        return wide.map(Int.init)
    }
}
