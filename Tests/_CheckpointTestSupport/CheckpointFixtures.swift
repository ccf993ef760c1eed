import Checkpointing
import Foundation
import TensorCore

/// Small checkpoints for the checkpoint store's and the checkpoint service's tests.
public enum CheckpointFixtures {
    public static func contents(step: Int, validationLoss: Double? = nil) -> CheckpointContents {
        let model = StateDict([("model.embed_tokens.weight", Tensor(shape: [3, 2], scalars: [1, 2, 3, 4, 5, 6])),
                               ("model.norm.weight", Tensor(shape: [2], scalars: [0.5, -0.25]))])
        let optimizer = StateDict([("model.embed_tokens.weight.exp_avg", Tensor(shape: [3, 2], scalars: [1, 2, 3, 4, 5, 6])),
                                   ("model.embed_tokens.weight.exp_avg_sq", Tensor(shape: [3, 2], scalars: [6, 5, 4, 3, 2, 1])),
                                   ("model.norm.weight.exp_avg", Tensor(shape: [2], scalars: [7, 8])),
                                   ("model.norm.weight.exp_avg_sq", Tensor(shape: [2], scalars: [2, 1]))])
        let shards = ["model.embed_tokens.weight": TensorShard(globalShape: [3, 2], offset: [0, 0], axis: "expert"),
                      "model.norm.weight": TensorShard(globalShape: [2], offset: [0])]
        return CheckpointContents(model: model, optimizer: optimizer, shards: shards,
                                  state: TrainerState(step: step, seed: 3, samplesSeen: step * 8, tokensSeen: step * 80, configHash: "abc",
                                                      dataParallel: 2, sequenceParallel: 1, validationLoss: validationLoss),
                                  runConfig: "train:\n  steps: 5\n", huggingFaceConfig: ["model_type": "llama"])
    }

    /// Rank 0 holds rows 0-1 of the embedding and the norm; rank 1 row 2; rank 2 nothing.
    public static func threeRankParts(_ whole: CheckpointContents, step: Int = 4) -> [CheckpointShardSnapshot] {
        let e = "model.embed_tokens.weight", n = "model.norm.weight"
        func rows(_ t: Tensor, _ range: Range<Int>) -> Tensor { Tensor(shape: [range.count, 2], scalars: Array(t.scalars[(range.lowerBound * 2)..<(range.upperBound * 2)])) }
        let metadata = try! CheckpointMetadata.files(weightMap: [e: "model-00001-of-00003.safetensors", n: "model-00001-of-00003.safetensors"],
                                                     shapes: [e: [3, 2], n: [2]], state: whole.state, runConfig: whole.runConfig,
                                                     huggingFaceConfig: whole.huggingFaceConfig)
        let first = CheckpointShardSnapshot(
            step: step, rank: 0, ranks: 3,
            model: StateDict([(e, rows(whole.model[e]!, 0..<2)), (n, whole.model[n]!)]),
            optimizer: StateDict([(e + ".exp_avg", rows(whole.optimizer[e + ".exp_avg"]!, 0..<2)), (e + ".exp_avg_sq", rows(whole.optimizer[e + ".exp_avg_sq"]!, 0..<2)),
                                  (n + ".exp_avg", whole.optimizer[n + ".exp_avg"]!), (n + ".exp_avg_sq", whole.optimizer[n + ".exp_avg_sq"]!)]),
            shards: [e: TensorShard(globalShape: [3, 2], offset: [0, 0], axis: "expert"), n: TensorShard(globalShape: [2], offset: [0])],
            metadataFiles: metadata)
        let second = CheckpointShardSnapshot(
            step: step, rank: 1, ranks: 3,
            model: StateDict([(e, rows(whole.model[e]!, 2..<3))]),
            optimizer: StateDict([(e + ".exp_avg", rows(whole.optimizer[e + ".exp_avg"]!, 2..<3)), (e + ".exp_avg_sq", rows(whole.optimizer[e + ".exp_avg_sq"]!, 2..<3))]),
            shards: [e: TensorShard(globalShape: [3, 2], offset: [2, 0], axis: "expert")])
        let third = CheckpointShardSnapshot(step: step, rank: 2, ranks: 3, model: StateDict(), optimizer: StateDict(), shards: [:])
        return [first, second, third]
    }
}

extension CheckpointStore {
    /// Writes whole-tensor `contents` under `root` as a one-rank run would (a stale partial
    /// directory of the same step is replaced); the committed checkpoint's directory.
    @discardableResult
    public func write(_ contents: CheckpointContents) throws -> URL {
        try? FileManager.default.removeItem(at: root.appendingPathComponent(CheckpointLayout.partialName(step: contents.state.step)))
        let sink = DirectoryCheckpointSink(root: root)
        return try sink.fetch(step: try sink.deliver(contents.part()).step)
    }
}
