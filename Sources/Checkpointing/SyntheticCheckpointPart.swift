import Foundation
import TensorCore

/// Structurally valid checkpoint parts made of deterministic pseudo-random tensors, for the
/// tests and the testing tool (`tessera ckpt upload-test`) that exercise the sinks and the
/// checkpoint service without training a model. Built with the same API as training
/// (`CheckpointShardSnapshot`, `CheckpointMetadata`), so a committed step of them is an ordinary
/// checkpoint that `CheckpointStore.read` loads. `package` access: the package's own targets
/// (the tests, the CLI's hidden tool) use it; it is not part of the library's public API.
///
/// Rank r owns one tensor, `synthetic.rank<r>.weight`, a vector of `floats` values, with its two
/// AdamW moments; rank 0's part adds the index (naming every rank's model file), `config.json`,
/// `trainer_state.json` (step, `validationLoss`) and `run.yaml`.
package enum SyntheticCheckpointPart {
    /// Rank `rank`'s part of `step` out of `ranks`. The same arguments give the same bytes.
    package static func make(step: Int, rank: Int, ranks: Int, floats: Int, validationLoss: Double? = nil, seed: UInt64 = 0) throws -> CheckpointPart {
        precondition(floats >= 1 && ranks >= 1 && (0..<ranks).contains(rank), "a synthetic part needs floats >= 1 and 0 <= rank < ranks")
        let name = tensorName(rank: rank)
        var state = seed &+ UInt64(step) &* 1_000_003 &+ UInt64(rank) &+ 1
        /// Uniform in [-scale/2, scale/2) (squared: a second moment is never negative).
        func values(scale: Float, squared: Bool = false) -> Tensor {
            Tensor(shape: [floats], scalars: (0..<floats).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                let x = scale * (Float(state >> 40) / Float(1 << 24) - 0.5)
                return squared ? x * x : x
            })
        }
        let model = StateDict([(name, values(scale: 2))])
        let optimizer = StateDict([(name + ".exp_avg", values(scale: 0.1)), (name + ".exp_avg_sq", values(scale: 0.01, squared: true))])
        var metadata: [CheckpointFile] = []
        if rank == 0 {
            let names = (0..<ranks).map(tensorName)
            let trainerState = TrainerState(step: step, seed: seed, samplesSeen: step * ranks, tokensSeen: step * ranks * floats,
                                            configHash: "synthetic", dataParallel: ranks, sequenceParallel: 1, validationLoss: validationLoss)
            metadata = try CheckpointMetadata.files(
                weightMap: Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, CheckpointLayout.modelFile(rank: $0, ranks: ranks)) }),
                shapes: Dictionary(uniqueKeysWithValues: names.map { ($0, [floats]) }), state: trainerState,
                runConfig: "# synthetic checkpoint (tessera ckpt upload-test)\nranks: \(ranks)\n", huggingFaceConfig: ["model_type": "synthetic"])
        }
        let snapshot = CheckpointShardSnapshot(step: step, rank: rank, ranks: ranks, model: model, optimizer: optimizer,
                                               shards: [name: TensorShard(globalShape: [floats], offset: [0])],
                                               metadataFiles: metadata)
        return try snapshot.part()
    }

    /// The tensor rank `rank` owns.
    package static func tensorName(rank: Int) -> String { "synthetic.rank\(rank).weight" }
}
