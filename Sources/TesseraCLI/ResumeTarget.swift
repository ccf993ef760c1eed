import ArgumentParser
import Checkpointing
import Foundation

/// What `train --resume` continues: a run directory and, when chosen, the step of one of its
/// checkpoints (`--resume RUN --step N`, or `--resume RUN/checkpoints/step-NNNNNNNN`).
struct ResumeTarget: Equatable {
    let runDirectory: String
    /// nil: the newest complete checkpoint.
    let step: Int?

    init(runDirectory: String, step: Int?) {
        self.runDirectory = runDirectory; self.step = step
    }

    /// A checkpoint directory (`…/checkpoints/step-NNNNNNNN`) names its run and step; anything
    /// else is a run directory, continued from `step` or its newest checkpoint.
    init(argument: String, step: Int?) throws {
        let url = URL(fileURLWithPath: argument).standardizedFileURL
        let parent = url.deletingLastPathComponent()
        guard let named = CheckpointLayout.step(ofDirectory: url.lastPathComponent), parent.lastPathComponent == "checkpoints" else {
            self.init(runDirectory: argument, step: step)
            return
        }
        if let step, step != named {
            throw ValidationError("--resume \(argument) is the checkpoint of step \(named), and --step says \(step): pass one of them")
        }
        self.init(runDirectory: parent.deletingLastPathComponent().path, step: named)
    }

    var checkpoints: CheckpointStore {
        CheckpointStore(root: URL(fileURLWithPath: runDirectory).appendingPathComponent("checkpoints"))
    }

    /// The complete checkpoint to continue from (its run.yaml is the run's config).
    func checkpoint() throws -> URL {
        let store = checkpoints
        guard let step else {
            guard let latest = store.latest() else {
                throw CommandLineError.nothingToResume(runDirectory: runDirectory, checkpoints: store.root.path)
            }
            return latest
        }
        guard let chosen = store.complete().first(where: { $0.step == step }) else {
            let steps = store.complete().map { String($0.step) }
            throw CommandLineError.noSuchCheckpoint(runDirectory: runDirectory, step: step, available: steps)
        }
        return chosen.url
    }
}
