import Checkpointing
import Foundation

/// A run stopped on request (Ctrl-C, SIGTERM, or `--stop-at`) after writing a checkpoint.
public struct TrainingInterrupted: Error, CustomStringConvertible {
    public var step: Int
    public var checkpoint: String?
    public var runDirectory: String
    /// The command that continues it (`train`, `distill`).
    public var command: String
    /// Stopped at the step `--stop-at` named, not on a signal.
    public var atStopStep: Bool

    public init(step: Int, checkpoint: String?, runDirectory: String, command: String = "train", atStopStep: Bool = false) {
        self.step = step; self.checkpoint = checkpoint; self.runDirectory = runDirectory; self.command = command
        self.atStopStep = atStopStep
    }

    public var description: String {
        "stopped at step \(step) \(atStopStep ? "(--stop-at)" : "on request")\(checkpoint.map { "; checkpoint \($0) written" } ?? "")"
    }

    /// The process's exit status: 0 for `--stop-at` and for every stop under MPI (a rank's
    /// non-zero exit makes mpirun abort the job), else 130, the shell's status for an interrupt.
    public func exitStatus(underMPI: Bool) -> Int32 {
        atStopStep || underMPI ? 0 : 130
    }
}

/// What `Trainer.run` tells `onRunEvent` on rank 0.
public enum RunEvent {
    /// It holds run.dir (its lock file) until it returns or throws.
    case holdingRunDirectory(RunDirectoryLock)
    /// The newest complete checkpoint of run.dir: at the start (nil: none) and after each one
    /// written; `stopping`: the checkpoint of a requested stop, the run's last.
    case newestCheckpoint(URL?, stopping: Bool)
}

/// What a finished run reports.
public struct RunSummary: Sendable {
    /// Steps this invocation ran (a resumed run counts from where it resumed).
    public var steps: Int
    /// The step the run ended on.
    public var finalStep: Int
    public var finalTrainLoss: Double
    public var finalValidationLoss: Double
    public var seconds: Double
    public var tokensPerSecond: Double
    public var losses: [Double]
}

extension Trainer: StepProgram {
    /// The whole run: optional resume, steps with progress, validation, metrics and checkpoints
    /// (`RunLoop`). `resume`: continue from the newest checkpoint of run.dir; without it, a
    /// run.dir that already holds checkpoints is refused rather than overwritten.
    /// `stopAt`: stop after that step with a checkpoint, as an interrupted run would (the
    /// schedule still spans train.steps), to continue later with `resume`.
    public func run(resume: Bool, stopAt: Int? = nil) throws -> RunSummary {
        let loop = RunLoop(checkpoints: checkpoints, runDirectory: runDirectory, reporter: reporter, stopRequested: stopRequested,
                           onRunEvent: onRunEvent)
        try loop.run(self, resume: resume, end: min(config.train.steps, stopAt ?? config.train.steps), startLines: startLines)
        if progress.validation.isNaN { progress.validation = try validationLoss() }
        let seconds = Date().timeIntervalSince(loop.started), losses = progress.losses
        let summary = RunSummary(steps: losses.count, finalStep: step, finalTrainLoss: losses.last ?? .nan, finalValidationLoss: progress.validation,
                                 seconds: seconds, tokensPerSecond: losses.isEmpty ? 0 : Double(losses.count * tokensPerStep) / seconds,
                                 losses: losses)
        reporter?.finish(summary)
        return summary
    }

    public var command: String { "train" }

    public func runDirectoryInUse(checkpoint: String) -> Error {
        TrainingError.runDirectoryInUse(runDirectory: runDirectory.path, checkpoint: checkpoint)
    }

    public func resume(loop: RunLoop) throws -> Int? {
        let from = try resumeFromLatest()
        let location = checkpointSink.location
        reporter?.note(from.map { "resumed from step \($0) of \(location)" } ?? "no checkpoint in \(location) yet; starting from step 0")
        if let from, from >= config.train.steps {
            throw TrainingError.resumePastEnd(checkpoint: location, step: from, steps: config.train.steps)
        }
        return from
    }

    public func begin(loop: RunLoop, metrics: MetricsLog?) throws {
        progress = RunProgress()
        reporter?.start(step: step, total: config.train.steps, tokensPerStep: tokensPerStep, ranks: grid.world.size)
    }

    public func takeStep(loop: RunLoop, end: Int) throws -> [[String: Any]] {
        let rate = schedule.rate(at: step)
        let loss = try trainStep()
        progress.losses.append(loss)
        guard step % config.train.logEvery == 0 || step == end else { return [] }
        progress.tokensPerSecond = loop.takeRate(tokensPerStep: tokensPerStep)
        progress.learningRate = Double(rate)
        var record: [String: Any] = ["step": step, "loss": loss, "lr": Double(rate), "grad_norm": lastGradientNorm,
                                     "tokens_per_s": progress.tokensPerSecond, "elapsed_s": Date().timeIntervalSince(loop.started)]
        for (name, value) in auxiliaries.totals { record[name] = value }
        record.merge(routingRecord()) { $1 }
        return [record]
    }

    public func afterStep(loop: RunLoop, end: Int, metrics: MetricsLog?) throws -> (checkpoint: Bool, validationLoss: Double?) {
        if step % config.train.logEvery == 0 || step == end {
            reporter?.progress(step: step, total: config.train.steps, loss: progress.losses.last ?? .nan, learningRate: progress.learningRate,
                               tokensPerSecond: progress.tokensPerSecond)
        }
        let evalEvery = config.eval.every
        var validatedNow: Double?
        if (evalEvery > 0 && step % evalEvery == 0) || step == end {
            progress.validation = try validationLoss()
            validatedNow = progress.validation
            reporter?.validation(step: step, loss: progress.validation)
            try metrics?.write(["step": step, "val_loss": progress.validation, "val_bpb": progress.validation / log(2)])
        }
        let every = config.checkpoint.every
        return (every > 0 && step % every == 0, validatedNow)
    }

    public func submitCheckpoint(to checkpoints: TrainingCheckpoints, validationLoss: Double?) throws {
        checkpoints.submit(try checkpointPart(validationLoss: validationLoss))
    }

    /// The metrics of the last training step's mixture-of-experts layers (means over its
    /// micro-batch passes, `StepAuxiliaries`): `aux_loss`, the sum of
    /// their weighted auxiliary losses (the objective is `loss` + `aux_loss`; `loss` stays the
    /// mean cross-entropy, comparable with `val_loss` and dense runs), and `moe`, one entry per
    /// layer: its weighted `aux_loss` and `z_loss`, `balance` (the balance loss without its
    /// coefficient, 1 at perfect balance), `dropped` (fraction of pairs over capacity) and `load`
    /// (fraction of the pairs routed to each expert). Empty for a dense model.
    func routingRecord() -> [String: Any] {
        let routing = auxiliaries.routing
        guard !routing.isEmpty else { return [:] }
        let losses = auxiliaries.losses
        let layers: [[String: Any]] = routing.keys.sorted().map { layer in
            let r = routing[layer]!
            return ["layer": layer, "aux_loss": losses["moe_aux"]?[layer] ?? 0, "z_loss": losses["moe_z"]?[layer] ?? 0,
                    "balance": r.balance, "dropped": r.droppedFraction, "load": r.load]
        }
        return ["aux_loss": auxiliaries.totals.values.reduce(0, +), "moe": layers]
    }
}

/// What `Trainer.run` gathers over its steps for the summary and the progress lines.
struct RunProgress {
    var losses: [Double] = []
    var validation = Double.nan
    var learningRate = 0.0, tokensPerSecond = 0.0
}
