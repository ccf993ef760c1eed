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

    /// Largest step a checkpoint may have: 2^53, exact in every JSON reader (Python's floats,
    /// JavaScript), and far beyond any run. Steps outside `0...maxStep` are refused wherever a
    /// peer or a file supplies one.
    public static let maxStep = 1 << 53

    /// `step-` and the step's decimal digits, zero-padded to at least 8 (`step-00000042`); all
    /// digits are kept, so step 2^32 + 5 is `step-4294967301`, never cut to 32 bits. Only for
    /// steps in `0...maxStep` (callers check).
    public static func directoryName(step: Int) -> String {
        "step-" + padded(step, 8)
    }
    public static func partialName(step: Int) -> String { "." + directoryName(step: step) + ".partial" }
    /// Where a commit of a step already committed moves the previous copy while it renames the
    /// new one into place (`CheckpointCommit.recoverReplaced` deals with what a crash leaves).
    public static func replacedName(step: Int) -> String { "." + directoryName(step: step) + ".replaced" }

    /// The step of a committed checkpoint directory's name (`step-00000042` → 42); nil unless
    /// the name is exactly `directoryName(step:)` of a step in `0...maxStep`.
    public static func step(ofDirectory name: String) -> Int? {
        guard name.hasPrefix("step-") else { return nil }
        let digits = name.utf8.dropFirst(5)
        guard digits.count >= 8, digits.count <= 20, digits.allSatisfy({ (0x30...0x39).contains($0) }),
              let step = Int(name.dropFirst(5)), step <= maxStep, directoryName(step: step) == name else { return nil }
        return step
    }

    /// The step of a hidden entry of one step, `.step-N` followed by `suffix`
    /// (`.step-00000042.partial`); nil for any other name.
    public static func step(ofHidden name: String, suffix: String) -> Int? {
        guard name.hasPrefix("."), name.hasSuffix(suffix), name.count > suffix.count + 1 else { return nil }
        return step(ofDirectory: String(name.dropFirst().dropLast(suffix.count)))
    }

    public static func modelFile(rank: Int, ranks: Int) -> String { "model-\(padded(rank + 1, 5))-of-\(padded(ranks, 5)).safetensors" }
    public static func optimizerFile(rank: Int, ranks: Int) -> String { "optimizer-\(padded(rank + 1, 5))-of-\(padded(ranks, 5)).safetensors" }

    /// `value`'s decimal digits zero-padded to at least `width` (`%0Nd` without its 32-bit cut).
    static func padded(_ value: Int, _ width: Int) -> String {
        let digits = String(value.magnitude)
        return (value < 0 ? "-" : "") + String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    /// Whether `name` is an optimizer shard file.
    public static func isOptimizerFile(_ name: String) -> Bool { name.hasPrefix("optimizer-") && name.hasSuffix(".safetensors") }

    /// The marker a rank leaves in the partial directory once all its files are durable.
    public static func marker(rank: Int) -> String { ".rank-\(padded(rank, 5)).delivered" }
    public static func isMarker(_ name: String) -> Bool { name.hasPrefix(".rank-") && name.hasSuffix(".delivered") }
    /// A SHA-256 as `checksums.json` records it: 64 lower-case hex digits.
    public static func isSHA256(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}
