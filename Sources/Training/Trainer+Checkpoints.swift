import Checkpointing
import Collectives
import Foundation
import Models
import TensorCore

extension Trainer {
    /// Where this rank's checkpoint parts go.
    public var checkpointSink: CheckpointSink { checkpoints.sink }

    /// Whether this rank writes `entry` into checkpoints: the lowest world rank among those
    /// holding the same tensor (rank 0 for replicated tensors, expert replica 0 for experts).
    func ownsInCheckpoints(_ entry: ParameterSet.Entry) -> Bool {
        grid.replicas(ofShardsAlong: entry.placement.shardAxis).rank == 0
    }

    /// This rank's part of the checkpoint of this step, encoded straight out of the training
    /// buffers (one copy; the writer thread only writes or sends it): the tensors it owns and
    /// their moments; rank 0 adds the index (every rank's tensor names
    /// are gathered, not their values), `config.json`, `trainer_state.json` and `run.yaml`.
    /// Every rank calls it (the names travel by all-gather).
    func checkpointPart(validationLoss: Double?) throws -> CheckpointPart {
        let p = model.parameters
        let owned = p.entries.filter(ownsInCheckpoints)
        let names = try grid.world.allGatherBytes(Array(owned.map(\.name).joined(separator: "\n").utf8))
        let placed = TrainingCheckpoints.shards(of: p)
        var tensors: [SafeTensors.Source] = [], moments: [SafeTensors.Source] = [], shards: [String: TensorShard] = [:]
        func source(_ name: String, _ buffer: FloatBuffer, _ e: ParameterSet.Entry) -> SafeTensors.Source {
            SafeTensors.Source(name: name, shape: e.shape, scalars: UnsafeBufferPointer(rebasing: buffer.buffer[e.range]))
        }
        for e in owned {
            tensors.append(source(e.name, p.values, e))
            moments.append(source(e.name + ".exp_avg", optimizer.exponentialAverage, e))
            moments.append(source(e.name + ".exp_avg_sq", optimizer.exponentialAverageSquares, e))
            shards[e.name] = placed[e.name]
        }
        let world = grid.world
        var metadata: [CheckpointFile] = []
        if world.rank == 0 {
            var weightMap: [String: String] = [:]
            for (rank, list) in names.enumerated() {
                for name in String(decoding: list, as: UTF8.self).split(separator: "\n") {
                    weightMap[String(name)] = CheckpointLayout.modelFile(rank: rank, ranks: world.size)
                }
            }
            let state = TrainerState(step: step, seed: UInt64(config.train.seed), samplesSeen: samplesSeen, tokensSeen: samplesSeen * data.length,
                                     configHash: config.numericHash, dataParallel: grid.dataSize, sequenceParallel: grid.sequenceSize,
                                     expertParallel: grid.size(of: .expert), validationLoss: validationLoss)
            metadata = try CheckpointMetadata.files(weightMap: weightMap,
                                                    shapes: Dictionary(uniqueKeysWithValues: model.globalDeclarations.map { ($0.name, $0.shape) }),
                                                    state: state, runConfig: config.yaml, huggingFaceConfig: model.config.huggingFaceConfig)
        }
        return try CheckpointShardSnapshot.part(step: step, rank: world.rank, ranks: world.size, model: tensors, optimizer: moments,
                                                shards: shards, metadataFiles: metadata)
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
        let loaded = try checkpoints.loadLatest(step: resumeStep) { [self] url, contents in   // on rank 0's loading thread, while this one waits
            let saved = try RunConfig(resolvedYAML: contents.runConfig, source: url.path + "/run.yaml")
            if contents.state.configHash != config.numericHash {
                throw TrainingError.configChanged(checkpoint: url.path, changes: config.numericDifferences(from: saved))
            }
            try model.parameters.load(contents.model, source: url.path, global: model.globalDeclarations)
            try optimizer.load(contents.optimizer, stepsTaken: contents.state.step, source: url.path, global: model.globalDeclarations)
            if let chosen = resumeStep { moved = try supersedeCheckpoints(after: chosen) }   // rank 0 holds run.dir
        }
        if let moved { reporter?.note(moved) }
        guard loaded.found else { return nil }
        try checkpoints.broadcast([model.parameters.values] + optimizer.buffers)
        try experts.scatterFromReader(loaded.contents)
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
        if !(checkpoints.sink is DirectoryCheckpointSink) {
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
