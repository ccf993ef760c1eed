import ArgumentParser
import CheckpointService
import Checkpointing
import Collectives
import Foundation
import Networking
import Training

/// `tessera bench checkpoint`: how fast a checkpoint of a bench model is written, directly to a
/// directory and through the checkpoint service (an in-process `CheckpointServer` on loopback),
/// next to a plain copy of the same bytes on the same disk (read, write, fsync per file), and
/// the service channel's sealing of the same bytes alone (`seal`). One JSON line per path, in
/// MB/s (10^6 bytes) of the committed checkpoint's files.
struct CheckpointBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Checkpoint write throughput (MB/s): direct, through the checkpoint service, and a plain copy of the same bytes.")
    @OptionGroup var options: ConfigOptions
    @Option(parsing: .unconditional, help: "Timed saves per path (a training step between saves, untimed).")
    var runs = 3
    @Option(help: "Scratch directory on the disk to measure (default: the system's temporary directory).")
    var scratch: String?

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("--runs \(runs) must be at least 1") }
    }

    func run() throws {
        let fallback = options.config == nil && !options.helpConfig ? try TrainBench.defaultConfigFile() : nil
        var config = try options.load(defaultFile: fallback?.file)
        if let fallback { config = config.resolvingPaths(against: fallback.base) }
        let base = URL(fileURLWithPath: scratch ?? NSTemporaryDirectory()).appendingPathComponent("tessera-bench-checkpoint-\(getpid())")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: base) }
        config.checkpoint.keep = 1
        config.train.steps = 2 * runs + 2

        // Direct: ranks write their parts into run.dir/checkpoints and rank 0 commits.
        config.run.dir = base.appendingPathComponent("direct").path
        let direct = try Trainer(config: config.validated(), world: SingleProcessCommunicator())
        let (directSeconds, committed) = try timeSaves(direct)
        BackgroundDeletions.shared.waitForAll()   // retention's unlinking must not overlap the next path's timing
        let bytes = try Self.bytes(of: committed)

        // Through the service: the same parts streamed over loopback TCP, committed by the service.
        let token = JobToken.generate()
        let server = CheckpointServer(root: base.appendingPathComponent("service-root"), token: token,
                                      retention: CheckpointRetention(keepLast: 1, keepBest: 0), log: { _ in })
        try server.start()
        defer { server.stop() }
        config.run.dir = base.appendingPathComponent("service").path
        config.checkpoint.service = "127.0.0.1:\(server.port)"
        var sinkOptions = CheckpointSinkOptions(config: config, identity: "bench")
        sinkOptions.token = token
        let viaService = try Trainer(config: config.validated(), world: SingleProcessCommunicator(), checkpointSink: CheckpointSinks.make(sinkOptions))
        let (serviceSeconds, _) = try timeSaves(viaService)
        BackgroundDeletions.shared.waitForAll()

        // A plain copy of the committed files.
        var copySeconds: [Double] = []
        for run in 0..<runs {
            let target = base.appendingPathComponent("copy-\(run)")
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            let start = DispatchTime.now().uptimeNanoseconds
            for name in try FileManager.default.contentsOfDirectory(atPath: committed.path).sorted() {
                let data = try Data(contentsOf: committed.appendingPathComponent(name))
                try CheckpointCommit.writeDurably(data, to: target.appendingPathComponent(name))
            }
            try CheckpointCommit.fsync(target)
            copySeconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            try FileManager.default.removeItem(at: target)
        }
        // Sealing alone: the service channel's seal and open of the same bytes (CheckpointBench+Seal.swift).
        let sealSeconds = try Self.timeSealing(committed, runs: runs)
        let comm = SingleProcessCommunicator()
        let shape: [String: Any] = ["config": options.config ?? "configs/bench-dense.yaml", "checkpoint_mb": BenchReport.round4(bytes / 1e6)]
        let median = { (values: [Double]) in values.sorted()[values.count / 2] }
        let unsealed = BenchReport.round4(bytes / 1e6 / max(1e-9, median(serviceSeconds) - median(sealSeconds)))
        for (impl, seconds) in [("direct", directSeconds), ("service", serviceSeconds), ("copy", copySeconds), ("seal", sealSeconds)] {
            try BenchReport.emit("checkpoint", impl: impl, threads: 1, comm: comm, shape: shape, unit: "MB/s",
                                 values: seconds.map { bytes / 1e6 / $0 }, extra: impl == "service" ? ["unsealed_bound": unsealed] : [:])
        }
    }

    /// Seconds of each synchronous save (encode, write or send, commit), one training step
    /// between saves; and the last committed directory.
    private func timeSaves(_ trainer: Trainer) throws -> ([Double], URL) {
        var seconds: [Double] = []
        var last: URL?
        for _ in 0..<runs {
            try trainer.trainStep()
            let start = DispatchTime.now().uptimeNanoseconds
            let url = try trainer.saveCheckpoint()
            seconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            last = url ?? last
        }
        let latest = try trainer.checkpointSink.latestStep().map { try trainer.checkpointSink.fetch(step: $0) }
        guard let committed = last ?? latest else { throw ValidationError("no checkpoint was committed") }
        return (seconds, committed)
    }

    private static func bytes(of directory: URL) throws -> Double {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).reduce(0.0) { total, name in
            let size = try FileManager.default.attributesOfItem(atPath: directory.appendingPathComponent(name).path)[.size] as? Int ?? 0
            return total + Double(size)
        }
    }
}
