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

/// What a delivery achieved: this rank's part of `step` is durable at the sink, and, when
/// `committed`, the step is committed (complete, at `location`; `directory` when that is a
/// directory of this machine). Callers use the receipt, never the disk, to learn of commits.
public struct CheckpointReceipt: Sendable, Equatable {
    public var step: Int
    public var committed: Bool
    /// Where the checkpoint is, for messages ("the checkpoint service at HOST:PORT", a path).
    public var location: String
    /// The committed checkpoint's local directory; nil when not committed or not local.
    public var directory: URL?

    public init(step: Int, committed: Bool, location: String, directory: URL? = nil) {
        self.step = step; self.committed = committed; self.location = location; self.directory = directory
    }
}

/// Where ranks hand their checkpoint parts: a directory (shared by the ranks) or the checkpoint
/// service over TCP. Both destinations produce identical files. Built from the run's config
/// (or a command's options) by one factory, `CheckpointSinks.make` (CheckpointService).
public protocol CheckpointSink: AnyObject {
    /// Where this sink's checkpoints live, for messages ("resumed from step 8 of ...").
    var location: String { get }
    /// The local directory its complete checkpoints are in; nil when they are elsewhere (the
    /// service: only its newest can be continued, and a download is a cache).
    var directory: URL? { get }
    /// Makes the destination ready before the run's first save, proving it usable. Every rank
    /// calls it once; `owner` is the one process holding the run directory (it alone clears what
    /// a stopped run left). Returns lines saying what it did.
    func prepare(owner: Bool) throws -> [String]
    /// Delivers this rank's part; returns once it is durable at the destination (written and
    /// fsynced, or acknowledged by the service), with whether that committed the step. Called
    /// from the rank's checkpoint writer thread, never from the training thread.
    @discardableResult
    func deliver(_ part: CheckpointPart) throws -> CheckpointReceipt
    /// The newest complete checkpoint's step, or nil when there is none.
    func latestStep() throws -> Int?
    /// A local directory holding the complete checkpoint of `step` (the service path downloads
    /// it into a local cache first).
    func fetch(step: Int) throws -> URL
}
