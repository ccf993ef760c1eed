/// Why a distillation run (`tessera distill`) cannot start or go on; each case names the
/// file, key or checkpoint concerned and what to change.
public enum DistillRunError: Error, Equatable, CustomStringConvertible {
    /// The distill config sets a key the teacher's run.yaml decides (the model's shape).
    case teacherKeyInConfig(key: String, origin: String)
    /// A key only `tessera train` reads (parallel.zero, train.micro_batch) set to other than 0.
    case trainOnlyKey(key: String, value: Int, origin: String)
    /// `parallel.reduction: ordered`, which only `tessera train` implements.
    case orderedReduction(origin: String)
    /// Every stage has 0 steps.
    case nothingToDistill(source: String)
    /// A run directory already holds distillation checkpoints and no resume was asked for.
    case runDirectoryInUse(runDirectory: String, checkpoint: String)
    /// The newest checkpoint of the run directory is not a distillation checkpoint, or lacks
    /// what resuming needs.
    case notADistillCheckpoint(path: String, reason: String)
    /// A resumed run's config differs from the checkpoint's in a key that changes the numbers.
    case configChanged(checkpoint: String, key: String, saved: String, now: String)
    /// Nothing left to do: the checkpoint is at or past the last step of the last stage.
    case alreadyFinished(checkpoint: String, step: Int)

    public var description: String {
        switch self {
        case let .teacherKeyInConfig(key, origin):
            return "\(origin): \(key) is the teacher's (the model comes from the teacher checkpoint's run.yaml); remove it from the distill config"
        case let .trainOnlyKey(key, value, origin):
            return "\(origin): \(key) = \(value) is read by tessera train only; distillation holds whole optimizer state and takes the batch in one pass: set \(key)=0"
        case let .orderedReduction(origin):
            return "\(origin): parallel.reduction = ordered is read by tessera train only; distillation all-reduces its gradients: set parallel.reduction=allreduce"
        case let .nothingToDistill(source):
            return "\(source): distill.stage1_steps, stage2_steps and stage3_steps are all 0; give at least one stage steps"
        case let .runDirectoryInUse(runDirectory, checkpoint):
            return "run directory \(runDirectory) already holds distillation checkpoint \(checkpoint); continue it with --resume \(runDirectory) or set run.dir to a new directory"
        case let .notADistillCheckpoint(path, reason):
            return "\(path): not a distillation checkpoint (\(reason)); resume a run directory that tessera distill wrote"
        case let .configChanged(checkpoint, key, saved, now):
            return "\(key) is \(now) but \(checkpoint) was distilled with \(saved); resume with the same value (or start a new run.dir)"
        case let .alreadyFinished(checkpoint, step):
            return "\(checkpoint) (step \(step)) already ends the last stage; nothing to resume: a distillation's stage steps are fixed when it starts, so it cannot be extended; train the student further with tessera train --config \(checkpoint)/run.yaml --init-from \(checkpoint) --set run.dir=NEW, or distill again into a new run.dir"
        }
    }
}
