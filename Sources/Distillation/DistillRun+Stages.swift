import Checkpointing
import Collectives
import Foundation
import Kernels
import Models
import TensorCore
import Training
import TrainingConfig

/// The figures of the stage an invocation is running, for its summary.
struct StageTally {
    let stage: Int
    let started = Date()
    var ran = 0
    var first: [Double]?, last: [Double] = []
    /// The progress and summary lines of the last step, printed after the stop check.
    var lines: [String] = []
    /// The student's validation loss measured at the last step (a stage's end).
    var validatedNow: Double?
}

// The distillation as the run loop's step program: stage steps in order, each stage ending
// with the student's validation and a checkpoint.
extension DistillRun: StepProgram {
    /// The distiller on this rank: its batch is this rank's share of the global batch, from
    /// `batches` (the training split, as training samples it).
    static func makeDistiller(teacher: TransformerLM, student: TransformerLM, config: RunConfig, batches: DistillBatches,
                              grid: ProcessGrid) throws -> Distiller {
        try Distiller(teacher: teacher, student: student, settings: config.distill, batch: batches.data.localBatch,
                      length: config.data.seqLen, threads: KernelThreads(config.train.threads), grid: grid,
                      bucketBytes: Int(config.parallel.bucketMB * 1_048_576), nextBatch: { batches.next() })
    }

    public var command: String { "distill" }

    public func runDirectoryInUse(checkpoint: String) -> Error {
        DistillRunError.runDirectoryInUse(runDirectory: runDirectory.path, checkpoint: checkpoint)
    }

    public func resume(loop: Training.RunLoop) throws -> Int? {
        let from = try resumeFromLatest()
        reporter?.note(from.map { "resumed from step \($0) (stage \(stage), step \(stageStep) of \(steps(ofStage: stage))) of \(checkpointLocation)" }
                       ?? "no checkpoint in \(checkpointLocation) yet; starting from the beginning")
        return from
    }

    /// At the start of a run, the teacher's validation loss (metrics: `teacher_val_loss`).
    public func begin(loop: Training.RunLoop, metrics: MetricsLog?) throws {
        guard stage == 0 else { return }
        let loss = try Evaluator(model: teacher, data: batches.data, comm: world).validationLoss(batches: config.eval.batches)
        reporter?.note(String(format: "teacher %@: validation loss %.4f nats/byte over %d batches", teacherCheckpoint.path, loss, config.eval.batches))
        try metrics?.write(["step": 0, "teacher_val_loss": loss])
    }

    public func takeStep(loop: Training.RunLoop, end: Int) throws -> [[String: Any]] {
        if stage == 0 || stageStep >= steps(ofStage: stage) {   // the next stage with steps
            (stage, stageStep) = ((stage + 1...3).first { steps(ofStage: $0) > 0 }!, 0)
        }
        let s = stage, total = steps(ofStage: s), names = lossNames(stage: s)
        if tally?.stage != s {
            reporter?.note("stage \(s) (\(Self.stageTitle(s))): steps \(stageStep + 1)...\(total), \(total * tokensPerStep) tokens, \(world.size) rank\(world.size == 1 ? "" : "s")")
            tally = StageTally(stage: s)
        }
        let losses = try distiller.step(stage: s)
        stageStep += 1
        tally!.ran += 1
        tally!.first = tally!.first ?? losses
        tally!.last = losses
        (tally!.lines, tally!.validatedNow) = ([], nil)
        let (g, ending) = (step, stageStep == total)
        var records: [[String: Any]] = []
        if g % max(config.train.logEvery, 1) == 0 || ending || stageStep == 1 {
            let rate = loop.takeRate(tokensPerStep: tokensPerStep)
            var record: [String: Any] = ["stage": s, "step": g, "stage_step": stageStep, "tokens_per_s": rate,
                                         "elapsed_s": Date().timeIntervalSince(loop.started)]
            if s == 3 {
                for (name, value) in zip(names, losses) { record[name] = value }
            } else {
                record["layer_losses"] = Dictionary(uniqueKeysWithValues: zip(distiller.mambaLayers.map(String.init), losses))
            }
            records.append(record)
            tally!.lines.append(String(format: "stage %d step %d/%d (run step %d)  %@  %.0f tokens/s", s, stageStep, total, g,
                                       Self.lossText(names: names, losses), rate))
        }
        if ending {   // before the stop check, so a run stopped here has the stage's line
            let validation = try Evaluator(model: student, data: batches.data, comm: world).validationLoss(batches: config.eval.batches)
            records.append(["stage": s, "step": g, "val_loss": validation])
            let t = tally!
            let summary = DistillStageSummary(stage: s, steps: t.ran, tokens: t.ran * tokensPerStep, seconds: Date().timeIntervalSince(t.started),
                                              names: names, first: t.first ?? [], last: t.last, validationLoss: validation)
            summaries.append(summary)
            tally!.lines.append(Self.summaryLine(summary))
            tally!.validatedNow = validation
        }
        return records
    }

    public func afterStep(loop: Training.RunLoop, end: Int, metrics: MetricsLog?) throws -> (checkpoint: Bool, validationLoss: Double?) {
        tally?.lines.forEach { reporter?.note($0) }
        let every = config.checkpoint.every
        return (stageStep == steps(ofStage: stage) || (every > 0 && stageStep % every == 0), tally?.validatedNow)
    }

    public func submitCheckpoint(to checkpoints: TrainingCheckpoints, validationLoss: Double?) throws {
        checkpoints.submit(try checkpointPart(validationLoss: validationLoss ?? tally?.validatedNow))
    }

    /// The run config a student checkpoint carries: the teacher's with `model.sequence_mixer:
    /// mamba2`, `model.attention_layers` (distill.keep_attention) and `model.ssm_chunk_size`
    /// (distill.chunk_size), so eval, generate and ckpt build the student from it.
    static func studentRunConfig(_ config: RunConfig) throws -> RunConfig {
        try StudentBuilder.studentRunConfig(teacher: config, settings: config.distill)
    }
}
