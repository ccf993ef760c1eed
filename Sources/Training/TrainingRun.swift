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

extension Trainer {
    /// The whole run: optional resume, steps with progress, validation, metrics and checkpoints.
    /// `resume`: continue from the newest checkpoint of run.dir; without it, a run.dir that
    /// already holds checkpoints is refused rather than overwritten.
    /// `stopAt`: stop after that step with a checkpoint, as an interrupted run would (the
    /// schedule still spans train.steps), to continue later with `resume`.
    public func run(resume: Bool, stopAt: Int? = nil) throws -> RunSummary {
        let total = config.train.steps
        let end = min(total, stopAt ?? total)
        let lock = try holdRunDirectory()
        defer { lock?.release() }
        startLines.forEach { reporter?.note($0) }
        // Partial checkpoints a stopped run left behind; no rank saves before the collectives below.
        if lock != nil { for line in (checkpointSink as? DirectoryCheckpointSink)?.removeUnfinished() ?? [] { reporter?.note(line) } }
        reporter?.stopRequested = stopRequested
        if resume {
            let from = try resumeFromLatest()
            let location = checkpointSink.location
            if isReporter { reporter?.note(from.map { "resumed from step \($0) of \(location)" } ?? "no checkpoint in \(location) yet; starting from step 0") }
            if let from, from >= total {
                throw TrainingError.resumePastEnd(checkpoint: location, step: from, steps: total)
            }
        } else {
            let existing = isReporter ? (store.latest()?.path ?? "") : ""
            let message = String(decoding: try grid.world.broadcastBytes(Array(existing.utf8), root: 0), as: UTF8.self)
            if !message.isEmpty { throw TrainingError.runDirectoryInUse(runDirectory: runDirectory.path, checkpoint: message) }
        }
        if isReporter { onRunEvent?(.newestCheckpoint(store.latest(), stopping: false)) }
        do {
            return try runSteps(resume: resume, end: end)
        } catch {
            abandonCheckpoints()   // a save in flight finishes (or fails) before the run reports its error
            throw error
        }
    }

    /// The step loop of `run`, from `step` to `end`; checkpoints are saved asynchronously and
    /// the last one is waited for before it returns.
    private func runSteps(resume: Bool, end: Int) throws -> RunSummary {
        let total = config.train.steps
        let metrics = isReporter ? try MetricsLog(url: runDirectory.appendingPathComponent("metrics.jsonl"), append: resume, resumedAt: resume ? step : nil) : nil
        reporter?.start(step: step, total: total, tokensPerStep: tokensPerStep, ranks: grid.world.size)

        let start = Date()
        var intervalStart = Date(), intervalSteps = 0
        var losses: [Double] = []
        var validation = Double.nan
        var lastRate = 0.0
        while step < end {
            let rate = schedule.rate(at: step)
            let loss = try trainStep()
            losses.append(loss)
            reportCommittedCheckpoints()
            intervalSteps += 1
            let logging = step % config.train.logEvery == 0 || step == end
            if logging {
                let seconds = Date().timeIntervalSince(intervalStart)
                lastRate = Double(intervalSteps * tokensPerStep) / max(seconds, 1e-9)
                var record: [String: Any] = ["step": step, "loss": loss, "lr": Double(rate), "grad_norm": lastGradientNorm,
                                             "tokens_per_s": lastRate, "elapsed_s": Date().timeIntervalSince(start)]
                for (name, value) in model.auxiliaryLosses { record[name] = value }
                record.merge(routingRecord()) { $1 }
                try metrics?.write(record)
            }
            // Checked before printing: once mpirun has been interrupted it stops reading the
            // ranks' output, and a rank blocked writing a progress line would never checkpoint.
            if let stopRequested, try grid.world.allReduce(stopRequested() ? 1 : 0, op: .max) > 0 {
                // Every rank saw the request by now (max over ranks): stop at this same step.
                try startCheckpoint()
                let url = try finishCheckpoints()
                if let url { onRunEvent?(.newestCheckpoint(url, stopping: true)) }
                throw TrainingInterrupted(step: step, checkpoint: url?.path, runDirectory: runDirectory.path)
            }
            if logging {
                reporter?.progress(step: step, total: total, loss: loss, learningRate: Double(rate), tokensPerSecond: lastRate)
                intervalStart = Date(); intervalSteps = 0
            }
            let pauseStart = Date()   // validation and checkpoints are not training throughput
            defer { intervalStart += Date().timeIntervalSince(pauseStart) }
            let evalEvery = config.eval.every
            var validatedNow: Double?
            if (evalEvery > 0 && step % evalEvery == 0) || step == end {
                validation = try validationLoss()
                validatedNow = validation
                reporter?.validation(step: step, loss: validation)
                try metrics?.write(["step": step, "val_loss": validation, "val_bpb": validation / log(2)])
            }
            let checkpointEvery = config.checkpoint.every
            if (checkpointEvery > 0 && step % checkpointEvery == 0) || step == end {
                try startCheckpoint(validationLoss: validatedNow)   // written while training goes on
            }
        }
        if let url = try finishCheckpoints() { reportCheckpoint(url) }
        if validation.isNaN { validation = try validationLoss() }
        let seconds = Date().timeIntervalSince(start)
        let summary = RunSummary(steps: losses.count, finalStep: step, finalTrainLoss: losses.last ?? .nan, finalValidationLoss: validation,
                                 seconds: seconds, tokensPerSecond: losses.isEmpty ? 0 : Double(losses.count * tokensPerStep) / seconds,
                                 losses: losses)
        reporter?.finish(summary)
        return summary
    }

    /// Tells rank 0's observers about checkpoints the writer committed since the last look.
    func reportCommittedCheckpoints() {
        for url in takeCommittedCheckpoints() { reportCheckpoint(url) }
    }

    private func reportCheckpoint(_ url: URL) {
        onRunEvent?(.newestCheckpoint(url, stopping: false))
        reporter?.note("checkpoint \(url.path)")
    }

    /// The metrics of the last training step's mixture-of-experts layers: `aux_loss`, the sum of
    /// their weighted auxiliary losses (the objective is `loss` + `aux_loss`; `loss` stays the
    /// mean cross-entropy, comparable with `val_loss` and dense runs), and `moe`, one entry per
    /// layer: its weighted `aux_loss` and `z_loss`, `balance` (the balance loss without its
    /// coefficient, 1 at perfect balance), `dropped` (fraction of pairs over capacity) and `load`
    /// (fraction of the pairs routed to each expert). Empty for a dense model.
    func routingRecord() -> [String: Any] {
        let routing = model.routing
        guard !routing.isEmpty else { return [:] }
        let losses = model.auxiliaryLossesByLayer
        let layers: [[String: Any]] = routing.keys.sorted().map { layer in
            let r = routing[layer]!
            return ["layer": layer, "aux_loss": losses["moe_aux"]?[layer] ?? 0, "z_loss": losses["moe_z"]?[layer] ?? 0,
                    "balance": r.balance, "dropped": r.droppedFraction, "load": r.load]
        }
        return ["aux_loss": model.auxiliaryLosses.values.reduce(0, +), "moe": layers]
    }

    /// Rank 0 takes run.dir's lock (RunDirectoryLock) and tells every rank whether it could: a
    /// refusal is the same error on every rank. Returns the lock on rank 0, nil elsewhere.
    func holdRunDirectory() throws -> RunDirectoryLock? {
        var lock: RunDirectoryLock?
        var refusal: Error?
        if isReporter {
            do { lock = try RunDirectoryLock.acquire(runDirectory: runDirectory) } catch { refusal = error }
        }
        let message = String(decoding: try grid.world.broadcastBytes(Array((refusal.map { "\($0)" } ?? "").utf8), root: 0), as: UTF8.self)
        // Every rank has the message before any exits (a launcher stops the others when one exits).
        if !message.isEmpty { try grid.world.barrier() }
        if let refusal { throw refusal }
        if !message.isEmpty { throw TrainingError.runDirectoryUnavailable(message: message) }
        if let lock {
            if let stale = lock.tookOverFrom {
                reporter?.note("took over \(lock.path) from \(stale.summary), which has ended")
            }
            onRunEvent?(.holdingRunDirectory(lock))
        }
        return lock
    }
}
