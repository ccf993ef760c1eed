import Checkpointing
import Foundation

/// What a `RunLoop` drives: a training run (`Trainer`) or a distillation (`DistillRun`), one
/// step at a time. Every rank calls the same methods in the same order.
public protocol StepProgram: AnyObject {
    /// The command that continues a stopped run (`train`, `distill`).
    var command: String { get }
    /// Steps taken so far (the run's step; a checkpoint's step).
    var step: Int { get }
    /// The error for a run.dir that holds `checkpoint` when the run was not asked to resume.
    func runDirectoryInUse(checkpoint: String) -> Error
    /// Loads the newest checkpoint (rank 0 reads it, every rank receives what it holds) and
    /// says where the run resumed; its step, nil when there is none.
    func resume(loop: RunLoop) throws -> Int?
    /// Before the first step of this invocation (start lines, a first metrics record).
    func begin(loop: RunLoop, metrics: MetricsLog?) throws
    /// Takes one step; returns the records metrics.jsonl gets at once (before the stop check).
    func takeStep(loop: RunLoop, end: Int) throws -> [[String: Any]]
    /// After the stop check, if the run goes on: progress lines, validation. Returns whether
    /// this step ends with a checkpoint (the loop adds one at `end`) and the validation loss
    /// measured at it (for `checkpoint.keep_best`).
    func afterStep(loop: RunLoop, end: Int, metrics: MetricsLog?) throws -> (checkpoint: Bool, validationLoss: Double?)
    /// Hands this rank's part of the checkpoint of this step to `checkpoints` (`submit`).
    func submitCheckpoint(to checkpoints: TrainingCheckpoints, validationLoss: Double?) throws
}

/// The one run loop of training and distillation: rank 0 holds run.dir (its lock) and every
/// rank learns whether it could; an existing run is refused unless resumed; metrics.jsonl is
/// continued from the resumed step; a stop request (any rank) stops every rank at the same
/// step with a checkpoint; checkpoints are written on the writer thread while the steps go on,
/// the ranks waiting for a save together (`TrainingCheckpoints.waitForSavesOnEveryRank`, so a
/// slow save trips no collective deadline); rank 0's lines go through the stop-aware
/// `ProgressReporter`. Call from a plain thread (collectives block).
public final class RunLoop {
    public let checkpoints: TrainingCheckpoints
    let runDirectory: URL
    /// Rank 0's reporter (nil elsewhere, and on rank 0 when silent).
    public let reporter: ProgressReporter?
    let stopRequested: (() -> Bool)?
    let onRunEvent: ((RunEvent) -> Void)?
    /// When this invocation's steps began (`elapsed_s`).
    public private(set) var started = Date()
    private var intervalStart = Date(), intervalSteps = 0

    public init(checkpoints: TrainingCheckpoints, runDirectory: URL, reporter: ProgressReporter?, stopRequested: (() -> Bool)?,
         onRunEvent: ((RunEvent) -> Void)?) {
        self.checkpoints = checkpoints; self.runDirectory = runDirectory; self.reporter = reporter
        self.stopRequested = stopRequested; self.onRunEvent = onRunEvent
    }

    public var isReporter: Bool { checkpoints.world.rank == 0 }

    /// Runs `program` from where it is (the newest checkpoint with `resume`) to step `end`.
    /// `interruptAtEnd`: end with a checkpoint and `TrainingInterrupted` (`--stop-at`).
    /// `startLines`: printed once the run holds run.dir (a run refused at the door says one line).
    public func run(_ program: StepProgram, resume: Bool, end: Int, interruptAtEnd: Bool = false, startLines: [String] = []) throws {
        let lock = try holdRunDirectory()
        defer { lock?.release() }
        startLines.forEach { reporter?.note($0) }
        // The sink made ready (the owner clears what a stopped run left); no rank saves before the collectives below.
        try checkpoints.prepare(owner: lock != nil, reporter: reporter)
        reporter?.stopRequested = stopRequested
        var resumedAt: Int?
        if resume {
            resumedAt = try program.resume(loop: self)
        } else {
            let existing = isReporter ? (checkpoints.store.latest()?.path ?? "") : ""
            let message = String(decoding: try checkpoints.world.broadcastBytes(Array(existing.utf8), root: 0), as: UTF8.self)
            if !message.isEmpty { throw program.runDirectoryInUse(checkpoint: message) }
        }
        if isReporter { onRunEvent?(.newestCheckpoint(checkpoints.store.latest(), stopping: false)) }
        do {
            let metrics = isReporter ? try MetricsLog(url: runDirectory.appendingPathComponent("metrics.jsonl"), append: resumedAt != nil,
                                                      resumedAt: resumedAt) : nil
            try steps(program, end: end, interruptAtEnd: interruptAtEnd, metrics: metrics)
        } catch {
            // A save in flight finishes (or fails) before the run reports its error, without
            // reporting (when a peer is gone, rank 0 would wait for its part until the sink's deadline).
            checkpoints.writer.waitForInFlight(limit: 10)
            throw error
        }
    }

    private func steps(_ program: StepProgram, end: Int, interruptAtEnd: Bool, metrics: MetricsLog?) throws {
        try program.begin(loop: self, metrics: metrics)
        started = Date()
        (intervalStart, intervalSteps) = (Date(), 0)
        while program.step < end {
            let records = try program.takeStep(loop: self, end: end)
            intervalSteps += 1
            reportCommitted()
            for record in records { try metrics?.write(record) }
            // Checked before printing: once mpirun has been interrupted it stops reading the
            // ranks' output, and a rank blocked writing a progress line would never checkpoint.
            if let stopRequested, try checkpoints.world.allReduce(stopRequested() ? 1 : 0, op: .max) > 0 {
                // Every rank saw the request by now (max over ranks): stop at this same step.
                try startCheckpoint(program, validationLoss: nil)
                try interrupt(program, atStopStep: false)
            }
            let pauseStart = Date()   // validation and checkpoints are not throughput
            defer { intervalStart += Date().timeIntervalSince(pauseStart) }
            let after = try program.afterStep(loop: self, end: end, metrics: metrics)
            if after.checkpoint || program.step == end {
                try startCheckpoint(program, validationLoss: after.validationLoss)   // written while the steps go on
            }
            if interruptAtEnd && program.step == end { try interrupt(program, atStopStep: true) }
        }
        if let url = try finishCheckpoints() { reportCheckpoint(url) }
    }

    /// Tokens per second over the steps since the last call (pauses not counted); starts a new interval.
    public func takeRate(tokensPerStep: Int) -> Double {
        let rate = Double(intervalSteps * tokensPerStep) / max(Date().timeIntervalSince(intervalStart), 1e-9)
        (intervalStart, intervalSteps) = (Date(), 0)
        return rate
    }

    /// Waits until no rank has a save in flight, reports a failed save on every rank, then has
    /// `program` hand over this step's part. Every rank calls it.
    func startCheckpoint(_ program: StepProgram, validationLoss: Double?) throws {
        try checkpoints.prepareNext(step: program.step, reporter: reporter)
        try program.submitCheckpoint(to: checkpoints, validationLoss: validationLoss)
    }

    /// Waits for the last save on every rank; returns its directory on rank 0 (nil elsewhere).
    func finishCheckpoints() throws -> URL? {
        try checkpoints.finish(reporter: reporter)
    }

    /// After the stop checkpoint: waits for it and throws `TrainingInterrupted`.
    private func interrupt(_ program: StepProgram, atStopStep: Bool) throws -> Never {
        let url = try finishCheckpoints()
        if let url { reporter?.note("checkpoint \(url.path)"); onRunEvent?(.newestCheckpoint(url, stopping: true)) }
        throw TrainingInterrupted(step: program.step, checkpoint: url?.path, runDirectory: runDirectory.path, command: program.command,
                                  atStopStep: atStopStep)
    }

    /// Tells rank 0's observers about checkpoints the writer committed since the last look.
    func reportCommitted() {
        for url in checkpoints.takeCommitted(reporter: reporter) { reportCheckpoint(url) }
    }

    private func reportCheckpoint(_ url: URL) {
        onRunEvent?(.newestCheckpoint(url, stopping: false))
        reporter?.note("checkpoint \(url.path)")
    }

    /// Rank 0 takes run.dir's lock (RunDirectoryLock) and tells every rank whether it could: a
    /// refusal is the same error on every rank. Returns the lock on rank 0, nil elsewhere.
    private func holdRunDirectory() throws -> RunDirectoryLock? {
        let world = checkpoints.world
        var lock: RunDirectoryLock?
        var refusal: Error?
        if isReporter {
            do { lock = try RunDirectoryLock.acquire(runDirectory: runDirectory) } catch { refusal = error }
        }
        let message = String(decoding: try world.broadcastBytes(Array((refusal.map { "\($0)" } ?? "").utf8), root: 0), as: UTF8.self)
        // Every rank has the message before any exits (a launcher stops the others when one exits).
        if !message.isEmpty { try world.barrier() }
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
