import Foundation

/// Names of the files and directories of a checkpoint root (`runs/NAME/checkpoints/`).
///
/// A committed checkpoint is `step-0000000N/`: per rank `model-0000R-of-0000W.safetensors` and
/// `optimizer-0000R-of-0000W.safetensors` (R = rank + 1, W = world size; a rank that owns no
/// tensor writes neither), and from rank 0 `model.safetensors.index.json`, `config.json`,
/// `trainer_state.json` and `run.yaml`; at commit `checksums.json` and, last, `DONE`. While the
/// ranks deliver, the files sit in `.step-0000000N.partial/` beside one marker per rank.
public enum CheckpointLayout {
    public static let index = "model.safetensors.index.json"
    public static let huggingFaceConfig = "config.json"
    public static let trainerState = "trainer_state.json"
    public static let runConfig = "run.yaml"
    public static let checksums = "checksums.json"
    public static let done = "DONE"

    public static func directoryName(step: Int) -> String { String(format: "step-%08d", step) }
    public static func partialName(step: Int) -> String { "." + directoryName(step: step) + ".partial" }
    /// Where a commit of a step already committed moves the previous copy while it renames the
    /// new one into place (`CheckpointCommit.recoverReplaced` deals with what a crash leaves).
    public static func replacedName(step: Int) -> String { "." + directoryName(step: step) + ".replaced" }

    /// The step of a committed checkpoint directory's name (`step-00000042` → 42).
    public static func step(ofDirectory name: String) -> Int? {
        guard name.hasPrefix("step-") else { return nil }
        return Int(name.dropFirst(5))
    }

    public static func modelFile(rank: Int, ranks: Int) -> String { String(format: "model-%05d-of-%05d.safetensors", rank + 1, ranks) }
    public static func optimizerFile(rank: Int, ranks: Int) -> String { String(format: "optimizer-%05d-of-%05d.safetensors", rank + 1, ranks) }

    /// Whether `name` is an optimizer shard file.
    public static func isOptimizerFile(_ name: String) -> Bool { name.hasPrefix("optimizer-") && name.hasSuffix(".safetensors") }

    /// The marker a rank leaves in the partial directory once all its files are durable.
    public static func marker(rank: Int) -> String { String(format: ".rank-%05d.delivered", rank) }
    public static func isMarker(_ name: String) -> Bool { name.hasPrefix(".rank-") && name.hasSuffix(".delivered") }
}
