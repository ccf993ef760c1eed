import Foundation
import TensorCore

/// What a training run needs, besides tensors, to continue exactly where it stopped.
public struct TrainerState: Codable, Equatable, Sendable {
    /// Optimizer steps completed.
    public var step: Int
    public var seed: UInt64
    /// Global samples consumed so far (the data loader's cursor).
    public var samplesSeen: Int
    public var tokensSeen: Int
    /// Hash of the config keys that change the numbers (model, data, optimizer); resuming
    /// with a different one is refused.
    public var configHash: String
    public var dataParallel: Int
    public var sequenceParallel: Int
    /// Ranks of a data group holding different experts (1 in checkpoints written before experts).
    public var expertParallel: Int
    /// Validation loss measured at this step (nil when the run did not validate at it); best-K
    /// retention ranks checkpoints by it.
    public var validationLoss: Double?

    public init(step: Int, seed: UInt64, samplesSeen: Int, tokensSeen: Int, configHash: String, dataParallel: Int, sequenceParallel: Int,
                expertParallel: Int = 1, validationLoss: Double? = nil) {
        self.step = step; self.seed = seed; self.samplesSeen = samplesSeen; self.tokensSeen = tokensSeen
        self.configHash = configHash; self.dataParallel = dataParallel; self.sequenceParallel = sequenceParallel
        self.expertParallel = expertParallel; self.validationLoss = validationLoss
    }

    enum CodingKeys: String, CodingKey {
        case step, seed, samplesSeen, tokensSeen, configHash, dataParallel, sequenceParallel, expertParallel, validationLoss
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(step: c.decode(Int.self, forKey: .step), seed: c.decode(UInt64.self, forKey: .seed),
                      samplesSeen: c.decode(Int.self, forKey: .samplesSeen), tokensSeen: c.decode(Int.self, forKey: .tokensSeen),
                      configHash: c.decode(String.self, forKey: .configHash), dataParallel: c.decode(Int.self, forKey: .dataParallel),
                      sequenceParallel: c.decode(Int.self, forKey: .sequenceParallel),
                      expertParallel: c.decodeIfPresent(Int.self, forKey: .expertParallel) ?? 1,
                      validationLoss: c.decodeIfPresent(Double.self, forKey: .validationLoss))
    }
}

/// Where a tensor of a checkpoint sits in the whole tensor: this file holds the slice of
/// `globalShape` starting at `offset`; `axis` names the grid axis it is split along (nil:
/// replicated, the slice is the whole tensor).
public struct TensorShard: Codable, Equatable, Sendable {
    public var globalShape: [Int]
    public var offset: [Int]
    public var axis: String?

    public init(globalShape: [Int], offset: [Int], axis: String? = nil) {
        self.globalShape = globalShape; self.offset = offset; self.axis = axis
    }

    enum CodingKeys: String, CodingKey { case globalShape = "global_shape", offset, axis }
}

/// One checkpoint's contents, whole tensors whatever layout wrote it.
public struct CheckpointContents {
    public var model: StateDict
    /// AdamW's moments, one tensor per parameter, named `NAME.exp_avg` and `NAME.exp_avg_sq`.
    public var optimizer: StateDict
    /// Each parameter's place in the whole model, by parameter name; its moments share it. As
    /// read, each holds the whole tensor (offset zero) and `axis` names the grid axis it was
    /// split along when it was written.
    public var shards: [String: TensorShard]
    public var state: TrainerState
    /// The resolved run config (YAML) the checkpoint was written with.
    public var runConfig: String
    /// Hugging Face `config.json` of the model.
    public var huggingFaceConfig: [String: Any]

    public init(model: StateDict, optimizer: StateDict, shards: [String: TensorShard], state: TrainerState,
                runConfig: String, huggingFaceConfig: [String: Any]) {
        self.model = model; self.optimizer = optimizer; self.shards = shards
        self.state = state; self.runConfig = runConfig; self.huggingFaceConfig = huggingFaceConfig
    }

    /// The whole checkpoint as one rank's part, as a one-rank training run writes it
    /// (`model-00001-of-00001.safetensors`, `optimizer-00001-of-00001.safetensors`, ...), for
    /// any sink (`CheckpointSinks.make`) to deliver.
    public func part() throws -> CheckpointPart {
        let file = CheckpointLayout.modelFile(rank: 0, ranks: 1)
        let metadata = try CheckpointMetadata.files(
            weightMap: Dictionary(uniqueKeysWithValues: model.entries.map { ($0.name, file) }),
            shapes: Dictionary(uniqueKeysWithValues: model.entries.map { ($0.name, $0.tensor.shape) }),
            state: state, runConfig: runConfig, huggingFaceConfig: huggingFaceConfig)
        let whole = Dictionary(uniqueKeysWithValues: model.entries.map { e in
            (e.name, TensorShard(globalShape: e.tensor.shape, offset: e.tensor.shape.map { _ in 0 }, axis: shards[e.name]?.axis))
        })
        return try CheckpointShardSnapshot(step: state.step, rank: 0, ranks: 1, model: model, optimizer: optimizer,
                                           shards: whole, metadataFiles: metadata).part()
    }
}

/// Checkpoints of one run: directories `step-0000000N/` under `root` (`CheckpointLayout`).
///
/// A checkpoint is assembled in a hidden partial directory and renamed into place after
/// `DONE` is written (`CheckpointCommit`), so a crash leaves either a complete checkpoint or
/// none; a directory without `DONE` is ignored by `complete()` and `latest()`.
public struct CheckpointStore {
    public let root: URL

    public init(root: URL) { self.root = root }

    public static func directoryName(step: Int) -> String { CheckpointLayout.directoryName(step: step) }

    /// Complete checkpoints, oldest first.
    public func complete() -> [(step: Int, url: URL)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return names.compactMap { name -> (Int, URL)? in
            guard let step = CheckpointLayout.step(ofDirectory: name) else { return nil }
            let url = root.appendingPathComponent(name)
            return FileManager.default.fileExists(atPath: url.appendingPathComponent(CheckpointLayout.done).path) ? (step, url) : nil
        }.sorted { $0.0 < $1.0 }
    }

    public func latest() -> URL? { complete().last?.url }

    /// The validation loss recorded in a checkpoint's `trainer_state.json`, if any.
    public static func validationLoss(of directory: URL) -> Double? {
        FileManager.default.contents(atPath: directory.appendingPathComponent(CheckpointLayout.trainerState).path)
            .flatMap { try? JSONDecoder().decode(TrainerState.self, from: $0) }?.validationLoss
    }
}
