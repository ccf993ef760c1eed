import Foundation
import TensorCore

/// One rank's share of a checkpoint as tensors: copied out of the training buffers on the
/// training thread (cheap), turned into files by `part()` on the checkpoint writer thread.
public struct CheckpointShardSnapshot: Sendable {
    public var step: Int
    public var rank: Int
    /// The world size: how many parts the checkpoint needs.
    public var ranks: Int
    /// The tensors this rank owns, each the slice `shards[name]` of the whole tensor.
    public var model: StateDict
    /// Their AdamW moments, `NAME.exp_avg` and `NAME.exp_avg_sq`.
    public var optimizer: StateDict
    /// Each owned parameter's place in the whole tensor; its moments share it.
    public var shards: [String: TensorShard]
    /// Rank 0: the metadata files (`CheckpointMetadata.files`); empty elsewhere.
    /// (Its `trainer_state.json` holds the step's validation loss, when measured.)
    public var metadataFiles: [CheckpointFile]

    public init(step: Int, rank: Int, ranks: Int, model: StateDict, optimizer: StateDict, shards: [String: TensorShard],
                metadataFiles: [CheckpointFile] = []) {
        self.step = step; self.rank = rank; self.ranks = ranks; self.model = model; self.optimizer = optimizer
        self.shards = shards; self.metadataFiles = metadataFiles
    }

    /// The part to deliver: the model and optimizer shard files (none when this rank owns no
    /// tensor), each tensor's global shape, offset and axis in the files' metadata, and the
    /// metadata files.
    public func part() throws -> CheckpointPart {
        try Self.part(step: step, rank: rank, ranks: ranks, shards: shards, metadataFiles: metadataFiles,
                      model: { try SafeTensors.encode(model, metadata: $0) }, optimizer: { try SafeTensors.encode(optimizer, metadata: $0) },
                      isEmpty: model.isEmpty)
    }

    /// The same part encoded straight from the training buffers (`SafeTensors.Source`s, read
    /// during the call): one copy of the state instead of a snapshot and then its encoding.
    /// `optimizer` holds each model tensor's `NAME.exp_avg` and `NAME.exp_avg_sq`.
    public static func part(step: Int, rank: Int, ranks: Int, model: [SafeTensors.Source], optimizer: [SafeTensors.Source],
                            shards: [String: TensorShard], metadataFiles: [CheckpointFile] = []) throws -> CheckpointPart {
        try part(step: step, rank: rank, ranks: ranks, shards: shards, metadataFiles: metadataFiles,
                 model: { try SafeTensors.encode(model, metadata: $0) }, optimizer: { try SafeTensors.encode(optimizer, metadata: $0) },
                 isEmpty: model.isEmpty)
    }

    private static func part(step: Int, rank: Int, ranks: Int, shards: [String: TensorShard], metadataFiles: [CheckpointFile],
                             model: ([String: String]) throws -> Data, optimizer: ([String: String]) throws -> Data,
                             isEmpty: Bool) throws -> CheckpointPart {
        var files: [CheckpointFile] = []
        if !isEmpty {
            let shardText = try json(shards)
            files.append(CheckpointFile(name: CheckpointLayout.modelFile(rank: rank, ranks: ranks),
                                        data: try model(["format": "pt", "shards": shardText])))
            files.append(CheckpointFile(name: CheckpointLayout.optimizerFile(rank: rank, ranks: ranks),
                                        data: try optimizer(["shards": shardText, "step": String(step)])))
        }
        return CheckpointPart(step: step, rank: rank, ranks: ranks, files: files + metadataFiles)
    }

    static func json(_ shards: [String: TensorShard]) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(shards), as: UTF8.self)
    }
}

/// The files rank 0 adds to its part: the Hugging Face index (every tensor → the file holding
/// it, and every tensor's whole shape under `metadata.shapes`), `config.json`,
/// `trainer_state.json` and `run.yaml`.
public enum CheckpointMetadata {
    /// `weightMap`: every model tensor's name → its file; `shapes`: every model tensor's whole shape.
    public static func files(weightMap: [String: String], shapes: [String: [Int]], state: TrainerState, runConfig: String,
                             huggingFaceConfig: [String: Any]) throws -> [CheckpointFile] {
        let total = shapes.values.reduce(0) { $0 + $1.reduce(1, *) * 4 }
        let index: [String: Any] = ["metadata": ["total_size": total, "shapes": shapes], "weight_map": weightMap]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return [
            CheckpointFile(name: CheckpointLayout.index, data: try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])),
            CheckpointFile(name: CheckpointLayout.huggingFaceConfig,
                           data: Data((HuggingFaceExport.json(huggingFaceConfig) + "\n").utf8)),   // floats as floats
            CheckpointFile(name: CheckpointLayout.trainerState, data: try encoder.encode(state)),
            CheckpointFile(name: CheckpointLayout.runConfig, data: Data(runConfig.utf8)),
        ]
    }
}
