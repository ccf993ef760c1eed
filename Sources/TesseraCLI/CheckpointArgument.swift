import Checkpointing
import Foundation

/// What `--checkpoint` may name: a checkpoint directory (`.../step-00000400`), a run directory
/// (its `checkpoints/`), or a directory of checkpoints. The last two mean their newest complete
/// checkpoint.
enum CheckpointArgument {
    /// The checkpoint directory `path` stands for, and a note saying which was picked when the
    /// path was not a checkpoint itself.
    static func resolve(_ path: String) throws -> (url: URL, note: String?) {
        let url = URL(fileURLWithPath: path)
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw CheckpointError.missing(path: url.path, hint: "pass a run directory (runs/NAME) or a checkpoint (runs/NAME/checkpoints/step-00001000)")
        }
        guard isDirectory.boolValue else {
            throw CheckpointError.missing(path: url.path + "/", hint: "\(url.path) is a file; pass a run directory or a checkpoint directory")
        }
        let looksLikeCheckpoint = ["DONE", "model.safetensors.index.json", "trainer_state.json"]
            .contains { fm.fileExists(atPath: url.appendingPathComponent($0).path) }
        if looksLikeCheckpoint { return (url, nil) }   // CheckpointStore.read says what is wrong with it, if anything
        let nested = url.appendingPathComponent("checkpoints")
        let root = fm.fileExists(atPath: nested.path) ? nested : url
        let store = CheckpointStore(root: root)
        guard let latest = store.latest() else {
            let unfinished = ((try? fm.contentsOfDirectory(atPath: root.path)) ?? []).filter { $0.hasPrefix("step-") }.count
            throw CheckpointError.missing(path: root.path + "/step-*",
                                          hint: "\(root.path) holds no complete checkpoint" + (unfinished > 0 ? " (\(unfinished) unfinished, without DONE)" : "")
                                              + "; pass a run directory whose training wrote one, or a checkpoint directory")
        }
        return (latest, "using \(latest.path), the newest complete checkpoint under \(root.path)")
    }
}
