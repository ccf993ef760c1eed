import ArgumentParser
import Checkpointing
import CheckpointService
import Collectives
import Distillation
import Foundation
import Kernels
import Training
import TrainingConfig

struct Distill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Distill a transformer checkpoint into a Mamba-2 (or hybrid) student with MOHAWK's three stages, on the parallel layouts training runs on.",
        discussion: """
            The teacher is a training checkpoint (a run directory or runs/NAME/checkpoints/step-N); its run.yaml gives the \
            model. The distill config gives everything else: the distill section (per-stage steps and learning rates, \
            keep_attention, chunk_size, temperature, data_loss_weight), data, train.global_batch, train.seed, eval.batches, \
            checkpoint (every, keep, service) and run.dir; it may not set model, attention or moe keys.

            Stages: 1 matrix orientation (each Mamba layer's mixing matrix against the teacher's attention), 2 hidden-state \
            alignment (each layer's output against the teacher's), 3 knowledge distillation end to end. A stage with 0 steps \
            is skipped. Each stage ends with a checkpoint of the student (checkpoint.every adds some within a stage); eval, \
            generate and ckpt read it. metrics.jsonl holds every stage's losses per layer; `tessera report RUN_DIR` draws them.

            Layouts as in training: parallel.data, parallel.sequence (the teacher's attention ring or Ulysses by \
            parallel.sequence_mode; the student's Mamba-2 layers gather the whole sequence on every sequence rank, exact at \
            parallel.sequence times their work) and parallel.expert (an MoE teacher; teacher and student hold their experts' \
            shard). Every layout gives one rank's losses and student within 1e-5.

            Examples (runs/tiny: the default run, `tessera train --config configs/tiny.yaml`):
              tessera distill --teacher runs/tiny --config configs/distill.yaml
              scripts/mpirun.sh 2 distill --teacher runs/tiny --config configs/distill.yaml
              scripts/mpirun.sh 2 distill --teacher runs/tiny --config configs/distill.yaml --set parallel.sequence=2
              tessera launch --nproc 2 -- distill --teacher runs/tiny --config configs/distill.yaml
              tessera distill --resume runs/distill
              tessera distill --service HOST:PORT --teacher 400 --config configs/distill.yaml --output tiny-student

            With --service, the checkpoint service (tessera ckpt serve) runs the distillation as a job on its node, on one \
            rank: the teacher is a step it holds (400, step-00000400) or a path there, data.dir a path there, and the student's \
            run directory is ROOT/distills/NAME; the command waits for it and prints its log. The job token comes from \
            TESSERA_JOB_TOKEN.
            """)

    @Option(help: ArgumentHelp("The teacher: a run directory (its newest complete checkpoint) or a checkpoint directory. Optional with --resume (the checkpoint names it).", valueName: "CHECKPOINT"))
    var teacher: String?

    @Option(help: "Distill config (YAML); defaults apply to the keys it leaves out, the teacher's run.yaml to the model.")
    var config: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Override one config key, e.g. --set distill.stage1_steps=50 (repeatable).", valueName: "key=value"))
    var overrides: [String] = []

    @Option(help: ArgumentHelp("Continue the distillation in RUN_DIR from its newest complete checkpoint (its saved config and teacher unless --config / --teacher are given).", valueName: "RUN_DIR"))
    var resume: String?

    @Option(parsing: .unconditional, help: "Stop after this run step (steps of every stage counted together), writing a checkpoint, as if interrupted; continue with --resume.")
    var stopAt: Int?

    @Option(help: ArgumentHelp("Run the distillation as a job of the checkpoint service at HOST:PORT (tessera ckpt serve), on its node; needs --teacher, --config and --output.", valueName: "HOST:PORT"))
    var service: String?

    @Option(help: ArgumentHelp("With --service: the student's run directory, a plain name the service creates under its root's distills/.", valueName: "NAME"))
    var output: String?

    @Option(help: ArgumentHelp("With --service: seconds to wait for the job's result (the job goes on on the service if this runs out).", valueName: "SECONDS"))
    var jobTimeout: Double = 6 * 3600

    @OptionGroup var world: WorldOptions

    func validate() throws {
        if let stopAt, stopAt < 1 { throw ValidationError("--stop-at \(stopAt) must be at least 1") }
        if teacher == nil, resume == nil { throw ValidationError("pass --teacher CHECKPOINT (and --config FILE), or --resume RUN_DIR") }
        if resume == nil, config == nil { throw ValidationError("pass --config FILE (e.g. configs/distill.yaml) with --teacher") }
        if service != nil {
            if (ProcessEnvironment.worldSize ?? 1) > 1 { throw ValidationError("--service submits one job: run it as one process, not under mpirun or tessera launch") }
            guard jobTimeout > 0 else { throw ValidationError("--job-timeout \(jobTimeout) must be positive") }
            if resume != nil || stopAt != nil { throw ValidationError("--service runs a whole distillation as one job: drop --resume and --stop-at") }
            if teacher == nil || output == nil { throw ValidationError("--service needs --teacher (a step the service holds, or a path on its node) and --output NAME") }
        } else if output != nil {
            throw ValidationError("--output names a service job's run directory; without --service the config's run.dir is the student's")
        }
    }

    func run() throws {
        if let service, let teacher, let output, let file = config {
            guard let text = FileManager.default.contents(atPath: file) else { throw ConfigError.unreadableFile(path: file) }
            let sink = try CheckpointSinks.service(.client(of: service, identity: "distill client"))
            let request = ServiceJobRequest(kind: "distill", method: "mohawk", inputs: [teacher], output: output,
                                            config: String(decoding: text, as: UTF8.self), overrides: overrides)
            let result: ServiceJobResult
            do {
                result = try sink.submit(request, replyTimeout: jobTimeout)
            } catch CheckpointServiceError.timedOut(let address, _, let seconds) {
                throw ValidationError("no result from the checkpoint service at \(address) after \(Int(seconds)) s; the job goes on there, in its root's distills/\(output) (raise --job-timeout to wait longer)")
            }
            for line in result.log { print(line) }
            print("student distilled by the service at \(service): \(result.checkpoint)")
            return
        }
        var teacherPath = teacher
        var saved: RunConfig?
        if let resume, teacher == nil || config == nil {
            let store = CheckpointStore(root: URL(fileURLWithPath: resume).appendingPathComponent("checkpoints"))
            guard let latest = store.latest() else {
                throw CommandLineError.nothingToResume(runDirectory: resume, checkpoints: store.root.path)
            }
            let progressURL = latest.appendingPathComponent(DistillProgress.fileName)
            guard let data = FileManager.default.contents(atPath: progressURL.path),
                  let progress = try? JSONDecoder().decode(DistillProgress.self, from: data) else {
                throw DistillRunError.notADistillCheckpoint(path: latest.path, reason: "no readable \(DistillProgress.fileName)")
            }
            teacherPath = teacherPath ?? progress.teacher
            if config == nil {
                let runYAML = latest.appendingPathComponent("run.yaml").path
                guard let text = FileManager.default.contents(atPath: runYAML) else { throw CheckpointError.corrupt(path: runYAML, reason: "missing") }
                saved = try RunConfig(resolvedYAML: String(decoding: text, as: UTF8.self), source: runYAML)
            }
        }
        let (teacherURL, note) = try CheckpointArgument.resolve(teacherPath!)
        let rank = ProcessEnvironment.worldRank ?? 0
        if let note, rank == 0 { try? FileHandle.standardError.write(contentsOf: Data("tessera: teacher: \(note)\n".utf8)) }
        let contents = try CheckpointStore.read(teacherURL)
        let teacherConfig = try RunConfig(resolvedYAML: contents.runConfig, source: teacherURL.appendingPathComponent("run.yaml").path)
        var config = try saved.map { try DistillRunConfig.resumed(saved: $0, teacher: teacherConfig, overrides: overrides) }
            ?? DistillRunConfig.compose(teacher: teacherConfig, file: self.config, overrides: overrides)
        if let resume {   // the run continues where it is, whatever run.dir its config names
            config.run.dir = resume
            config = try config.validated()
        }
        config = config.resolvingPaths(against: FileManager.default.currentDirectoryPath)
        let comm = try world.makeWorld(defaultTimeout: config.parallel.timeoutSeconds, seal: config.parallel.tcpSeal)
        StopSignals.install()   // before the first line is printed (Train.run says why)
        try Matmul.select(config.gemmImplementation)
        let run = try DistillRun(config: config, teacherCheckpoint: teacherURL.standardizedFileURL, teacher: contents, world: comm)
        let kernelLines = try KernelSelection.startLines(comm: comm)
        if comm.rank == 0 {
            run.reporter = ProgressReporter(interactive: false)
            run.reporter?.stopRequested = { StopSignals.received }   // its first lines may meet a stalled reader
            kernelLines.forEach { run.reporter?.note($0) }
        }
        run.stopRequested = { StopSignals.received }
        if comm.rank == 0 { run.onRunEvent = StopSignals.observe(runDirectory: config.run.dir) }
        let summaries = try run.run(resume: resume != nil, stopAt: stopAt)
        if comm.rank == 0 {
            let tokens = summaries.reduce(0) { $0 + $1.tokens }
            print("distilled \(summaries.count) stage\(summaries.count == 1 ? "" : "s") on \(tokens) tokens into \(config.run.dir); student checkpoints in \(run.checkpointLocation)")
        }
    }
}

extension Distill {
    /// The checkpoint service's job runner for distillations: on the service's node, on one
    /// rank, in the job's own process (`tessera ckpt job`), the teacher a checkpoint the
    /// service holds, the client's config with its run directory `ROOT/distills/NAME` (new or
    /// empty) and checkpoints written there directly. Everything is checked before the
    /// directory is made; a job that fails before its first checkpoint leaves nothing behind.
    /// Returns the newest student checkpoint; the log holds the run's progress lines. Its
    /// teacher and token data only where `paths` allows.
    static func runServiceJob(_ request: ServiceJobRequest, root: URL, paths: ServicePaths, log: @escaping (String) -> Void) throws -> ServiceJobResult {
        guard request.inputs.count == 1, let text = request.config else {
            throw ValidationError("a distill job names one teacher and carries its config")
        }
        let teacherURL = try request.resolve(request.inputs[0], root: root, paths: paths)
        let output = try request.outputDirectory(root: root)
        let fm = FileManager.default
        if let existing = try? fm.contentsOfDirectory(atPath: output.path), !existing.isEmpty {
            throw ValidationError("\(output.path) on the service already exists and is not empty; choose another --output")
        }
        let contents = try CheckpointStore.read(teacherURL)
        let teacherConfig = try RunConfig(resolvedYAML: contents.runConfig, source: teacherURL.appendingPathComponent("run.yaml").path)
        var config = try DistillRunConfig.compose(teacher: teacherConfig, text: text, source: "the job's --config", overrides: request.overrides ?? [])
        config.run.dir = output.path
        config.checkpoint.service = ""   // the job writes beside the service's own checkpoints, not back through it
        config = try config.validated().resolvingPaths(against: fm.currentDirectoryPath)
        config.data.dir = try paths.check(config.data.dir, what: "data.dir").path   // before anything tells whether it exists
        try fm.createDirectory(at: output, withIntermediateDirectories: true)
        let summaries: [DistillStageSummary]
        do {
            try Data(text.utf8).write(to: output.appendingPathComponent("distill.yaml"))   // the config as sent, kept with the run
            try Matmul.select(config.gemmImplementation)
        let run = try DistillRun(config: config, teacherCheckpoint: teacherURL.standardizedFileURL, teacher: contents,
                                     world: SingleProcessCommunicator(), checkpointSink: nil)
            run.reporter = ProgressReporter(collect: log)
            summaries = try run.run(resume: false, stopAt: nil)
        } catch {
            if let newest = CheckpointStore(root: output.appendingPathComponent("checkpoints")).latest() {
                throw ValidationError("the distillation failed after writing \(newest.path): \(error)")
            }
            try? fm.removeItem(at: output)
            throw error
        }
        guard let newest = CheckpointStore(root: output.appendingPathComponent("checkpoints")).latest() else {
            throw ValidationError("the distillation in \(output.path) wrote no checkpoint")
        }
        let tokens = summaries.reduce(0) { $0 + $1.tokens }
        return ServiceJobResult(checkpoint: newest.path,
                                log: ["distilled \(summaries.count) stage\(summaries.count == 1 ? "" : "s") on \(tokens) tokens into \(output.path)"])
    }
}
