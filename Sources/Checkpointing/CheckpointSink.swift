import Foundation

/// One file of a checkpoint, as bytes (a safetensors shard, the index, `config.json`, ...).
public struct CheckpointFile: Sendable, Equatable {
    /// File name inside the checkpoint directory (no slashes).
    public var name: String
    public var data: Data

    public init(name: String, data: Data) { self.name = name; self.data = data }
}

/// What one rank contributes to the checkpoint of `step`: the files holding the tensors it
/// owns (replicated tensors by the lowest rank holding them, expert shards by their owners),
/// plus, on rank 0, the metadata files (index, `config.json`, `trainer_state.json`, `run.yaml`).
///
/// The checkpoint of `step` is complete when all `ranks` parts have arrived and verified;
/// only then is it committed (`DONE` written last, the directory renamed into place).
public struct CheckpointPart: Sendable, Equatable {
    public var step: Int
    /// World rank that produced this part.
    public var rank: Int
    /// How many parts the step needs (the world size).
    public var ranks: Int
    /// The files; rank 0's `trainer_state.json` records the step's validation loss (best-K retention reads it there).
    public var files: [CheckpointFile]

    public init(step: Int, rank: Int, ranks: Int, files: [CheckpointFile]) {
        self.step = step; self.rank = rank; self.ranks = ranks; self.files = files
    }
}

/// Where ranks hand their checkpoint parts: a directory (shared by the ranks) or the checkpoint
/// service over TCP. Both destinations produce identical files.
public protocol CheckpointSink: AnyObject {
    /// Delivers this rank's part; returns once it is durable at the destination (written and
    /// fsynced, or acknowledged by the service). Called from the rank's checkpoint writer
    /// thread, never from the training thread.
    func deliver(_ part: CheckpointPart) throws
    /// The newest complete checkpoint's step, or nil when there is none.
    func latestStep() throws -> Int?
    /// A local directory holding the complete checkpoint of `step` (the service path downloads
    /// it into a local cache first).
    func fetch(step: Int) throws -> URL
}
