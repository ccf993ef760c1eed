import Checkpointing
import Collectives
import Foundation
import Models
import TensorCore
import TrainingConfig

extension Trainer {
    /// Where this rank's checkpoint parts go.
    public var checkpointSink: CheckpointSink { checkpoints.sink }

    /// This rank's part of the checkpoint of this step (`TrainingCheckpoints.part`); rank 0
    /// adds `config.json`, `trainer_state.json` and `run.yaml`. Every rank calls it.
    func checkpointPart(validationLoss: Double?) throws -> CheckpointPart {
        try sharded?.gatherAll()   // the part copies whole tensors (parallel.zero = 3); pieces again after
        defer { sharded?.releaseAll() }
        return try TrainingCheckpoints.part(step: step, grid: grid, parameters: model.parameters, optimizer: optimizer) { [self] weightMap in
            let state = TrainerState(step: step, seed: UInt64(config.train.seed), samplesSeen: samplesSeen, tokensSeen: samplesSeen * data.length,
                                     configHash: config.numericHash, dataParallel: grid.dataSize, sequenceParallel: grid.sequenceSize,
                                     expertParallel: grid.size(of: .expert), validationLoss: validationLoss)
            return try CheckpointMetadata.files(weightMap: weightMap,
                                                shapes: Dictionary(uniqueKeysWithValues: model.globalDeclarations.map { ($0.name, $0.shape) }),
                                                state: state, runConfig: config.yaml, huggingFaceConfig: model.config.huggingFaceConfig)
        }
    }

    /// Starts the checkpoint of this step: waits for the previous save if it is still in
    /// flight on any rank (rank 0 says so; the ranks wait together, so a save longer than
    /// `parallel.timeout_seconds` trips no collective deadline), reports a failed previous save
    /// on every rank, copies this rank's tensors and hands them to the writer thread; training
    /// goes on meanwhile. Every rank calls it. `validationLoss`: measured at this step, for
    /// best-K retention.
    public func startCheckpoint(validationLoss: Double? = nil) throws {
        try checkpoints.prepareNext(step: step, reporter: reporter)
        checkpoints.submit(try checkpointPart(validationLoss: validationLoss))
    }

    /// Waits for the save in flight and reports any failure on every rank; returns, on rank 0,
    /// the newest checkpoint committed since the last call (nil elsewhere). Every rank calls it.
    @discardableResult
    public func finishCheckpoints() throws -> URL? {
        try checkpoints.finish(reporter: reporter)
    }

    /// Writes a checkpoint of this step and waits until it is committed; returns its
    /// directory on rank 0 (nil elsewhere). Every rank takes part.
    @discardableResult
    public func saveCheckpoint(validationLoss: Double? = nil) throws -> URL? {
        try startCheckpoint(validationLoss: validationLoss)
        return try finishCheckpoints()
    }

    /// Loads the newest complete checkpoint (rank 0 reads whole tensors, everyone receives
    /// what it holds), whatever layout wrote it. Returns the step resumed from, or nil when
    /// there is none.
    public func resumeFromLatest() throws -> Int? {
        var moved: String?
        let moments = optimizer.resumeBuffers()   // laid out like the parameters; each rank keeps its pieces
        let loaded = try checkpoints.loadLatest(step: resumeStep) { [self] url, contents in   // on rank 0's loading thread, while this one waits
            let saved = try RunConfig(resolvedYAML: contents.runConfig, source: url.path + "/run.yaml")
            if !config.matchesNumericHash(contents.state.configHash) {
                throw TrainingError.configChanged(checkpoint: url.path, changes: config.numericDifferences(from: saved))
            }
            try model.parameters.load(contents.model, source: url.path, global: model.globalDeclarations)
            try optimizer.load(contents.optimizer, into: moments, stepsTaken: contents.state.step, source: url.path, global: model.globalDeclarations)
            if let chosen = resumeStep { moved = try supersedeCheckpoints(after: chosen) }   // rank 0 holds run.dir
        }
        if let moved { reporter?.note(moved) }
        guard loaded.found else { return nil }
        try checkpoints.broadcast([model.parameters.values] + moments)
        try experts.scatterFromReader(loaded.contents, moments: moments)
        optimizer.keep(moments)
        sharded?.releaseAll()
        let state = loaded.contents.map { [$0.state.step, $0.state.samplesSeen] } ?? [0, 0]
        let received = try checkpoints.broadcast(state)
        (step, samplesSeen) = (received[0], received[1])
        optimizer.setStepsTaken(step)
        return step
    }

    /// Rank 0, holding run.dir, before resuming from `step` when newer checkpoints exist: moves
    /// them (and a copy of metrics.jsonl, whose later records the resumed run drops) into
    /// `run.dir/superseded-after-step-N` (a fresh name), so nothing is lost and the resumed run
    /// writes its own. Returns the line saying so, nil when there was nothing newer. Through the
    /// checkpoint service only the newest checkpoint can be continued.
    func supersedeCheckpoints(after step: Int) throws -> String? {
        let newer = store.complete().filter { $0.step > step }
        if checkpoints.sink.directory == nil {
            guard let newest = try checkpoints.sink.latestStep(), newest > step else { return nil }
            throw TrainingError.resumeFailed(message: "--step \(step): the checkpoint service holds newer checkpoints (step \(newest)); through the service only the newest can be continued")
        }
        guard !newer.isEmpty else { return nil }
        let fm = FileManager.default
        var aside = runDirectory.appendingPathComponent("superseded-after-step-\(step)")
        var n = 1
        while fm.fileExists(atPath: aside.path) { n += 1; aside = runDirectory.appendingPathComponent("superseded-after-step-\(step)-\(n)") }
        do {
            try fm.createDirectory(at: aside, withIntermediateDirectories: true)
            let metrics = runDirectory.appendingPathComponent("metrics.jsonl")
            if fm.fileExists(atPath: metrics.path) { try fm.copyItem(at: metrics, to: aside.appendingPathComponent("metrics.jsonl")) }
            for checkpoint in newer { try fm.moveItem(at: checkpoint.url, to: aside.appendingPathComponent(checkpoint.url.lastPathComponent)) }
        } catch {
            throw CheckpointError.writeFailed(path: aside.path, reason: error.localizedDescription)
        }
        let names = newer.map { $0.url.lastPathComponent }.joined(separator: ", ")
        return "moved the newer checkpoint\(newer.count == 1 ? "" : "s") \(names) and a copy of metrics.jsonl to \(aside.path) (nothing deleted)"
    }
}
