import Checkpointing
import Collectives
import Foundation
import Kernels
import Models
import TensorCore
import Training
import TrainingConfig

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

/// A whole distillation on every rank of `world`: stages 1 to 3 of MOHAWK on the training
/// split of `data.dir`, a `StepProgram` of the `RunLoop` training runs in (run.dir lock,
/// resume, stop, metrics.jsonl, progress, checkpoints of the student). Call `run` from a
/// plain thread (collectives block).
public final class DistillRun {
    /// The resolved config: the teacher's model, the distill config's other keys.
    public let config: RunConfig
    /// The run config student checkpoints carry (their run.yaml).
    public let studentConfig: RunConfig
    public let world: Communicator
    public let grid: ProcessGrid
    public let teacherCheckpoint: URL
    public let teacher: TransformerLM
    public let student: TransformerLM
    public let batches: DistillBatches
    public let distiller: Distiller
    let checkpoints: TrainingCheckpoints
    /// The last step taken: stage and steps of it done (stage 0: none yet).
    public internal(set) var stage = 0, stageStep = 0
    /// Rank 0's progress lines (nil elsewhere: silent).
    public var reporter: ProgressReporter?
    /// Polled after every step (the same on every rank): when true on any rank, every rank
    /// stops at that step with a checkpoint and throws `TrainingInterrupted`.
    public var stopRequested: (() -> Bool)?
    /// Told, on rank 0, what `run` holds and has written, as training tells it (`RunEvent`).
    public var onRunEvent: ((RunEvent) -> Void)?
    /// The stage this invocation is running, its figures so far (DistillRun+Stages.swift).
    var tally: StageTally?
    var summaries: [DistillStageSummary] = []

    /// `teacherCheckpoint`'s contents are read on every rank (each loads the teacher, or its
    /// experts' shard), so the checkpoint must be readable on every node. Any layout training
    /// accepts: `parallel.data`, `parallel.sequence` (ring or Ulysses attention; Mamba-2 layers
    /// gather the sequence) and `parallel.expert` (an MoE teacher; teacher and student hold
    /// their experts' shard). `checkpointSink`: nil for the one the
    /// config names (`CheckpointSinks.make`).
    public init(config: RunConfig, teacherCheckpoint: URL, teacher contents: CheckpointContents, world: Communicator,
                checkpointSink: CheckpointSink? = nil) throws {
        self.config = config
        self.world = world
        self.teacherCheckpoint = teacherCheckpoint
        studentConfig = try Self.studentRunConfig(config)
        let layout = try Trainer.layout(config, worldSize: world.size)
        grid = try ProcessGrid(world: world, layout: layout)
        guard config.train.globalBatch % layout.data == 0 else {
            throw TrainingError.batchDoesNotDivide(source: config.origin(of: "train.global_batch"), globalBatch: config.train.globalBatch, dataRanks: layout.data)
        }
        let data = try TrainingData(directory: config.data.dir, length: config.data.seqLen, globalBatch: config.train.globalBatch,
                                    seed: config.train.seed, dataRank: grid.dataIndex, dataRanks: layout.data,
                                    sequenceRank: grid.sequenceIndex, sequenceRanks: layout.sequence)
        let teacher = try TransformerLM(config: config.modelConfig, seed: 0, grid: grid)
        try teacher.parameters.load(contents.model, source: teacherCheckpoint.path, global: teacher.globalDeclarations)
        guard data.train.vocabSize <= teacher.config.vocabSize else {
            throw TrainingError.vocabularyTooSmall(source: teacherCheckpoint.appendingPathComponent("run.yaml").path, vocabSize: teacher.config.vocabSize,
                                                   dataVocabulary: data.train.vocabSize, directory: config.data.dir)
        }
        let keep = DistillLayerList(config.distill.keepAttention) ?? DistillLayerList(layers: [])
        student = try StudentBuilder.build(teacher: teacher.config, teacherWeights: contents.model, keepAttention: keep,
                                           chunkSize: config.distill.chunkSize, seed: UInt64(config.train.seed), source: teacherCheckpoint.path,
                                           grid: grid)
        self.teacher = teacher
        batches = DistillBatches(data: data)
        distiller = try Self.makeDistiller(teacher: teacher, student: student, config: config, batches: batches, grid: grid)
        checkpoints = try TrainingCheckpoints(config: config, world: world, sink: checkpointSink)
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

    /// The stages from where the run is (the start, or the newest checkpoint with `resume`)
    /// to the end, or to global step `stopAt` (then a checkpoint and `TrainingInterrupted`).
    /// Without `resume`, a run directory that already holds checkpoints is refused.
    public func run(resume: Bool, stopAt: Int? = nil) throws -> [DistillStageSummary] {
        let total = globalStep(stage: 3, stageStep: steps(ofStage: 3))
        let loop = Training.RunLoop(checkpoints: checkpoints, runDirectory: runDirectory, reporter: reporter, stopRequested: stopRequested,
                           onRunEvent: onRunEvent)
        (tally, summaries) = (nil, [])
        try loop.run(self, resume: resume, end: min(total, stopAt ?? total), interruptAtEnd: stopAt.map { $0 <= total } ?? false)
        return summaries
    }

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
}
