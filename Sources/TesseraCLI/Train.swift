import ArgumentParser
import CheckpointService
import Checkpointing
import Collectives
import Foundation
import Kernels
import Models
import Training
import TrainingConfig

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a model on every rank this job started (data, sequence and expert parallel, as parallel.* says).",
        discussion: "Run alone, under `mpirun -np N`, under `srun --mpi=pmix`, or under `tessera launch --nproc N --`.")

    @OptionGroup var options: ConfigOptions
    @OptionGroup var world: WorldOptions

    @Option(help: "Progress display: auto (a live bar on a terminal, plain lines otherwise; lines under mpirun, which gives ranks a terminal even when its own output is a file), bar, lines.")
    var progress: ProgressStyle = .auto

    @Option(help: ArgumentHelp("Continue the run in RUN_DIR from its newest complete checkpoint (its saved config, unless --config is given), or from the checkpoint directory RUN_DIR/checkpoints/step-NNNNNNNN.", valueName: "RUN_DIR"))
    var resume: String?

    @Option(parsing: .unconditional, help: ArgumentHelp("With --resume RUN_DIR: continue from the checkpoint of this step instead of the newest (newer ones are moved to RUN_DIR/superseded-after-step-N).", valueName: "N"))
    var step: Int?

    @Option(parsing: .unconditional, help: "Stop after this step, writing a checkpoint, as if interrupted (the schedule still spans train.steps); continue with --resume.")
    var stopAt: Int?

    @Option(help: ArgumentHelp("Start a new run from the weights of a checkpoint or run directory (fine-tuning: fresh optimizer, step 0).", valueName: "CHECKPOINT"))
    var initFrom: String?

    func validate() throws {
        if let stopAt, stopAt < 1 { throw ValidationError("--stop-at \(stopAt) must be at least 1") }
        if initFrom != nil, resume != nil { throw ValidationError("--init-from starts a new run; --resume continues one: pass only one") }
        if let step, resume == nil { throw ValidationError("--step \(step) chooses the checkpoint --resume continues from; pass --resume RUN_DIR too") }
        if let step, step < 1 { throw ValidationError("--step \(step) must be the step of a checkpoint (1 or more)") }
    }

    /// What `tessera train` alone prints instead of starting a long run on built-in defaults.
    static let usage = """
        tessera train needs a config or a run to resume:
          tessera train --config configs/tiny.yaml                 the default run (scripts/run.sh runs it on 2 ranks)
          tessera train --resume runs/NAME                         continue a run from its newest checkpoint
          tessera train --help-config                              every config key with its default
        """

    func run() throws {
        if options.config == nil, resume == nil, !options.helpConfig {
            try? FileHandle.standardError.write(contentsOf: Data((Self.usage + "\n").utf8))
            throw ExitCode(2)
        }
        var file = options.config
        let target = try resume.map { try ResumeTarget(argument: $0, step: step) }
        if let target, file == nil {
            if options.overrides.contains(where: { $0.hasPrefix("checkpoint.service=") }), target.checkpoints.latest() == nil {
                throw CommandLineError.resumeThroughServiceNeedsConfig(runDirectory: target.runDirectory)
            }
            file = try target.checkpoint().appendingPathComponent("run.yaml").path
        }
        let resume = target?.runDirectory
        var configOptions = options
        configOptions.config = file
        var config = try configOptions.load()
        if let resume {   // the run continues where it is, whatever run.dir its config names
            config.run.dir = resume
            config = try config.validated()
        }
        // The saved config records where the data and run really are, so a checkpoint can be
        // evaluated or resumed from any directory.
        config = config.resolvingPaths(against: FileManager.default.currentDirectoryPath)
        let comm = try world.makeWorld(defaultTimeout: config.parallel.timeoutSeconds, seal: config.parallel.tcpSeal)
        // Before the first line is printed: a write blocked on a stalled reader must already be
        // interruptible by a stop request (the request then stops the run after its first step).
        StopSignals.install()
        try Matmul.select(config.gemmImplementation)
        let trainer = try Trainer(config: config, world: comm)   // the checkpoint sink the config names
        if let initFrom { try trainer.initializeParameters(from: try CheckpointArgument.resolve(initFrom).url) }
        let kernelLines = try KernelSelection.startLines(comm: comm)
        if comm.rank == 0 {
            trainer.reporter = ProgressReporter(interactive: progress.interactive)
            trainer.reporter?.stopRequested = { StopSignals.received }   // its first lines may meet a stalled reader
            trainer.startLines = kernelLines   // printed once the run holds run.dir
        }
        trainer.stopRequested = { StopSignals.received }
        if comm.rank == 0 { trainer.onRunEvent = StopSignals.observe(runDirectory: config.run.dir) }
        trainer.resumeStep = target?.step
        let summary = try trainer.run(resume: resume != nil, stopAt: stopAt)
        if summary.finalStep < config.train.steps {
            trainer.reporter?.note("stopped at step \(summary.finalStep) (--stop-at); continue with: \(ResumeCommand.string(runDirectory: config.run.dir))")
        }
    }
}

enum ProgressStyle: String, ExpressibleByArgument, CaseIterable {
    case auto, bar, lines

    var interactive: Bool {
        switch self {
        case .bar: return true
        case .lines: return false
        case .auto: return isatty(STDOUT_FILENO) != 0 && ProcessEnvironment.environment["OMPI_COMM_WORLD_SIZE"] == nil
        }
    }
}

/// Ctrl-C, SIGTERM (a scheduler's preemption) and SIGUSR1 (what `scripts/mpirun.sh` makes of
/// Ctrl-C, and what mpirun forwards at once) ask the run to stop after the current step with a
/// checkpoint; a second signal ends the process at once. Under mpirun, SIGCONT is noted too: it
/// is how mpirun starts aborting a job (StopSignals+MPIRun.swift).
enum StopSignals {
    static var received: Bool { stopSignalCount > 0 }

    /// Handlers without SA_RESTART: a write blocked on a full pipe (mpirun no longer reading
    /// our output after Ctrl-C) returns EINTR, so the loop gets to its stop check.
    static func install() {
        prepareHandler()
        for number in [SIGINT, SIGTERM, SIGUSR1] + (MPIRunAbort.underMpirun ? [SIGCONT] : []) {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { StopSignals.handle($0) }   // StopSignals+Handler.swift
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            sigaction(number, &action, nil)
        }
        MPIRunAbort.startWatchdog()
    }
}

/// Written only by the signal handler (a plain global: no lazy initialisation).
nonisolated(unsafe) var stopSignalCount: Int32 = 0
