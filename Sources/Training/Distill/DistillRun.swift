import Checkpointing
import Collectives
import Foundation
import Kernels
import Models
import TensorCore

/// Where a distillation is: the stage of the last step taken and how many steps of it are
/// done. Saved with every distillation checkpoint (`distill_progress.json`).
public struct DistillProgress: Codable, Equatable, Sendable {
    /// The teacher checkpoint (absolute path), so `--resume RUN_DIR` alone finds it.
    public var teacher: String
    public var stage: Int
    public var stageStep: Int
    /// Steps of every stage so far (the checkpoint's step).
    public var step: Int
    /// Global samples taken (the data cursor).
    public var samplesSeen: Int

    public static let fileName = "distill_progress.json"
    /// The distiller's state (student, moments, counters) for an exact resume.
    public static let stateFileName = "distill_state.safetensors"
}

/// One stage's figures, for the summary rank 0 prints.
public struct DistillStageSummary: Sendable {
    public var stage: Int
    /// Steps this invocation ran of the stage (a resumed stage counts from where it resumed).
    public var steps: Int
    public var tokens: Int
    public var seconds: Double
    /// Names of the losses (`layer 0`, ... or `kd`, `data`, `total`), their first and last values.
    public var names: [String]
    public var first: [Double], last: [Double]
    /// The student's validation loss (nats/byte: tokens are bytes) at the end of the stage.
    public var validationLoss: Double
}

/// A whole distillation on every rank of `world` (data parallel): stages 1 to 3 of MOHAWK on
/// the training split of `data.dir`, with checkpoints of the student, `metrics.jsonl` and
/// progress lines on rank 0. Call `run` from a plain thread (collectives block).
public final class DistillRun {
    /// The resolved config: the teacher's model, the distill config's other keys.
    public let config: RunConfig
    /// The run config student checkpoints carry (their run.yaml).
    public let studentConfig: RunConfig
    public let world: Communicator
    public let teacherCheckpoint: URL
    public let teacher: TransformerLM
    public let student: TransformerLM
    public let batches: DistillBatches
    public let distiller: Distiller
    let checkpoints: TrainingCheckpoints
    /// The last step taken: stage and steps of it done (stage 0: none yet).
    public internal(set) var stage = 0, stageStep = 0
    /// Rank 0's progress lines (nil elsewhere: silent).
    public var output: ((String) -> Void)?
    /// Polled after every step (the same on every rank): when true on any rank, every rank
    /// stops at that step with a checkpoint and throws `TrainingInterrupted`.
    public var stopRequested: (() -> Bool)?
    /// Told, on rank 0, what `run` holds and has written, as training tells it (`RunEvent`).
    public var onRunEvent: ((RunEvent) -> Void)?

    /// `teacherCheckpoint`'s contents are read on every rank (each needs the whole teacher), so
    /// the checkpoint must be readable on every node. `checkpointSink`: nil for the directory
    /// `run.dir/checkpoints`.
    public init(config: RunConfig, teacherCheckpoint: URL, teacher contents: CheckpointContents, world: Communicator,
                checkpointSink: CheckpointSink? = nil) throws {
        self.config = config
        self.world = world
        self.teacherCheckpoint = teacherCheckpoint
        studentConfig = try Self.studentRunConfig(config)
        for (key, value) in [("parallel.sequence", config.parallel.sequence), ("parallel.expert", config.parallel.expert)] where value != 1 {
            throw DistillRunError.notDataParallel(source: config.source, key: key, value: value)
        }
        guard config.train.globalBatch % world.size == 0 else {
            throw TrainingError.batchDoesNotDivide(source: config.origin(of: "train.global_batch"), globalBatch: config.train.globalBatch, dataRanks: world.size)
        }
        let data = try TrainingData(directory: config.data.dir, length: config.data.seqLen, globalBatch: config.train.globalBatch,
                                    seed: config.train.seed, dataRank: world.rank, dataRanks: world.size)
        let threads = KernelThreads(config.train.threads)
        let teacher = try TransformerLM(config: config.modelConfig, seed: 0)
        try teacher.parameters.load(contents.model, source: teacherCheckpoint.path)
        guard data.train.vocabSize <= teacher.config.vocabSize else {
            throw TrainingError.vocabularyTooSmall(source: teacherCheckpoint.appendingPathComponent("run.yaml").path, vocabSize: teacher.config.vocabSize,
                                                   dataVocabulary: data.train.vocabSize, directory: config.data.dir)
        }
        let keep = DistillLayerList(config.distill.keepAttention) ?? DistillLayerList(layers: [])
        student = try StudentBuilder.build(teacher: teacher.config, teacherWeights: contents.model, keepAttention: keep,
                                           chunkSize: config.distill.chunkSize, seed: UInt64(config.train.seed), source: teacherCheckpoint.path)
        self.teacher = teacher
        batches = DistillBatches(data: data)
        distiller = try Self.makeDistiller(teacher: teacher, student: student, config: config, batches: batches, threads: threads, world: world)
        checkpoints = TrainingCheckpoints(config: config, world: world, sink: checkpointSink)
    }

    public var isReporter: Bool { world.rank == 0 }
    public var runDirectory: URL { URL(fileURLWithPath: config.run.dir) }
    public var tokensPerStep: Int { batches.data.tokensPerStep }
    public var checkpointLocation: String { checkpoints.sink.location }

    /// Steps of stage `s` (1...3) in the config.
    public func steps(ofStage s: Int) -> Int {
        switch s {
        case 1: return config.distill.stage1Steps
        case 2: return config.distill.stage2Steps
        default: return config.distill.stage3Steps
        }
    }

    /// The run's step number after `k` steps of stage `s`: the steps of the stages before it plus k.
    public func globalStep(stage s: Int, stageStep k: Int) -> Int {
        (1..<max(s, 1)).reduce(0) { $0 + steps(ofStage: $1) } + k
    }

    public var step: Int { stage == 0 ? 0 : globalStep(stage: stage, stageStep: stageStep) }

    // MARK: The run

    /// The stages from where the run is (the start, or the newest checkpoint with `resume`)
    /// to the end, or to global step `stopAt` (then a checkpoint and `TrainingInterrupted`).
    /// Without `resume`, a run directory that already holds checkpoints is refused.
    public func run(resume: Bool, stopAt: Int? = nil) throws -> [DistillStageSummary] {
        let lock = try holdRunDirectory()
        defer { lock?.release() }
        if lock != nil { (checkpoints.sink as? DirectoryCheckpointSink)?.removeUnfinished() }
        if resume {
            if let from = try resumeFromLatest() {
                note("resumed from step \(from) (stage \(stage), step \(stageStep) of \(steps(ofStage: stage))) of \(checkpointLocation)")
            } else {
                note("no checkpoint in \(checkpointLocation) yet; starting from the beginning")
            }
        } else {
            let existing = isReporter ? (checkpoints.store.latest()?.path ?? "") : ""
            let message = String(decoding: try world.broadcastBytes(Array(existing.utf8), root: 0), as: UTF8.self)
            if !message.isEmpty { throw DistillRunError.runDirectoryInUse(runDirectory: runDirectory.path, checkpoint: message) }
        }
        if isReporter { onRunEvent?(.newestCheckpoint(checkpoints.store.latest(), stopping: false)) }
        let metrics = isReporter ? try Self.openMetrics(runDirectory.appendingPathComponent("metrics.jsonl"), keepUpTo: stage == 0 ? nil : step) : nil
        do {
            return try runStages(metrics: metrics, stopAt: stopAt)
        } catch {
            checkpoints.writer.waitForInFlight(limit: 10)
            throw error
        }
    }

    private func runStages(metrics: MetricsLog?, stopAt: Int?) throws -> [DistillStageSummary] {
        let start = Date()
        if stage == 0 {
            let loss = try Evaluator(model: teacher, data: batches.data, comm: world).validationLoss(batches: config.eval.batches)
            note(String(format: "teacher %@: validation loss %.4f nats/byte over %d batches", teacherCheckpoint.path, loss, config.eval.batches))
            try metrics?.write(["step": 0, "teacher_val_loss": loss])
        }
        var summaries: [DistillStageSummary] = []
        for s in 1...3 where steps(ofStage: s) > 0 && s >= stage {
            let total = steps(ofStage: s)
            if s > stage { (stage, stageStep) = (s, 0) }
            if stageStep >= total { continue }   // resumed at the end of this stage
            let names = lossNames(stage: s)
            note("stage \(s) (\(Self.stageTitle(s))): steps \(stageStep + 1)...\(total), \(total * tokensPerStep) tokens, \(world.size) rank\(world.size == 1 ? "" : "s")")
            let stageStart = Date()
            var intervalStart = Date(), intervalSteps = 0
            var first: [Double]?, last: [Double] = []
            var ran = 0
            while stageStep < total {
                let losses = try takeStep(stage: s)
                stageStep += 1; ran += 1; intervalSteps += 1
                first = first ?? losses
                last = losses
                let g = step
                let ending = stageStep == total
                if g % max(config.train.logEvery, 1) == 0 || ending || stageStep == 1 {
                    let rate = Double(intervalSteps * tokensPerStep) / max(Date().timeIntervalSince(intervalStart), 1e-9)
                    var record: [String: Any] = ["stage": s, "step": g, "stage_step": stageStep, "tokens_per_s": rate,
                                                 "elapsed_s": Date().timeIntervalSince(start)]
                    if s == 3 {
                        for (name, value) in zip(names, losses) { record[name] = value }
                    } else {
                        record["layer_losses"] = Dictionary(uniqueKeysWithValues: zip(distiller.mambaLayers.map(String.init), losses))
                    }
                    try metrics?.write(record)
                    note(String(format: "stage %d step %d/%d (run step %d)  %@  %.0f tokens/s", s, stageStep, total, g,
                                Self.lossText(names: names, losses), rate))
                    intervalStart = Date(); intervalSteps = 0
                }
                let pause = Date()
                var validatedNow: Double?
                if ending {   // before the stage's checkpoint, so a run resumed from it has the line
                    let validation = try Evaluator(model: student, data: batches.data, comm: world).validationLoss(batches: config.eval.batches)
                    try metrics?.write(["stage": s, "step": g, "val_loss": validation])
                    validatedNow = validation
                    let seconds = Date().timeIntervalSince(stageStart)
                    let summary = DistillStageSummary(stage: s, steps: ran, tokens: ran * tokensPerStep, seconds: seconds, names: names,
                                                      first: first ?? [], last: last, validationLoss: validation)
                    summaries.append(summary)
                    note(Self.summaryLine(summary))
                }
                let stopping = try stopRequested.map { try world.allReduce($0() ? 1 : 0, op: .max) > 0 } ?? false
                let every = config.checkpoint.every
                if stopping || ending || stopAt == g || (every > 0 && stageStep % every == 0) {
                    try startCheckpoint(validationLoss: validatedNow)
                }
                reportCommitted()
                if stopping || stopAt == g {
                    checkpoints.writer.waitForInFlight()
                    try checkpoints.checkFailures()
                    let url = checkpoints.writer.takeCommitted().compactMap(\.url).last
                    if let url { note("checkpoint \(url.path)"); onRunEvent?(.newestCheckpoint(url, stopping: true)) }
                    throw TrainingInterrupted(step: g, checkpoint: url?.path, runDirectory: runDirectory.path, command: "distill",
                                              atStopStep: !stopping)
                }
                intervalStart += Date().timeIntervalSince(pause)
            }
        }
        checkpoints.writer.waitForInFlight()
        try checkpoints.checkFailures()
        reportCommitted()
        return summaries
    }

    /// Tells rank 0's observers about the checkpoints committed since the last look.
    func reportCommitted() {
        for url in checkpoints.writer.takeCommitted().compactMap(\.url) {
            note("checkpoint \(url.path)")
            onRunEvent?(.newestCheckpoint(url, stopping: false))
        }
    }

    func note(_ line: String) { if isReporter { output?(line) } }

    /// The loss names of stage `s`: `layer L` per Mamba layer, or kd, data and total.
    public func lossNames(stage s: Int) -> [String] {
        s == 3 ? ["kd", "data", "total"] : distiller.mambaLayers.map { "layer \($0)" }
    }

    static func stageTitle(_ s: Int) -> String {
        ["", "matrix orientation", "hidden-state alignment", "knowledge distillation"][s]
    }

    static func lossText(names: [String], _ losses: [Double]) -> String {
        zip(names, losses).map { String(format: "%@ %.5g", $0.0, $0.1) }.joined(separator: "  ")
    }

    static func summaryLine(_ s: DistillStageSummary) -> String {
        let changes = zip(s.names, zip(s.first, s.last)).map { String(format: "%@ %.5g → %.5g", $0.0, $0.1.0, $0.1.1) }.joined(separator: ", ")
        return String(format: "stage %d done: %d steps, %d tokens, %.1f s (%.0f tokens/s); %@; student validation loss %.4f nats/byte",
                      s.stage, s.steps, s.tokens, s.seconds, Double(s.tokens) / max(s.seconds, 1e-9), changes, s.validationLoss)
    }

    /// metrics.jsonl, opened for appending: a new file when `keepUpTo` is nil; on resume (the
    /// checkpoint's step) the lines of later steps, logged by the interrupted run after its last
    /// checkpoint, are dropped first, so the file reads as one uninterrupted run.
    static func openMetrics(_ url: URL, keepUpTo step: Int?) throws -> MetricsLog {
        if let step, let text = try? String(contentsOf: url, encoding: .utf8) {
            let kept = text.split(separator: "\n").filter { line in
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      let s = (object["step"] as? NSNumber)?.intValue else { return false }
                return s <= step
            }
            try CheckpointCommit.writeDurably(Data(kept.map { $0 + "\n" }.joined().utf8), to: url)
        }
        return try MetricsLog(url: url, append: step != nil)
    }

    /// Rank 0 takes run.dir's lock and tells every rank whether it could (the same error everywhere).
    func holdRunDirectory() throws -> RunDirectoryLock? {
        var lock: RunDirectoryLock?, refusal: Error?
        if isReporter {
            do { lock = try RunDirectoryLock.acquire(runDirectory: runDirectory) } catch { refusal = error }
        }
        let message = String(decoding: try world.broadcastBytes(Array((refusal.map { "\($0)" } ?? "").utf8), root: 0), as: UTF8.self)
        if !message.isEmpty { try world.barrier() }
        if let refusal { throw refusal }
        if !message.isEmpty { throw TrainingError.runDirectoryUnavailable(message: message) }
        if let lock { onRunEvent?(.holdingRunDirectory(lock)) }
        return lock
    }
}
