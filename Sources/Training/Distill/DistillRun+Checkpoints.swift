import Checkpointing
import Foundation
import TensorCore

extension DistillRun {
    /// Starts the checkpoint of this step through the run's sink, as training does
    /// (`TrainingCheckpoints`: one save in flight, written on the writer thread, a failure on
    /// any rank reported on every rank). Every rank calls it. `validationLoss`: the student's,
    /// measured at this step (a stage's end), for `checkpoint.keep_best`.
    func startCheckpoint(validationLoss: Double? = nil) throws {
        if let waited = checkpoints.writer.waitForInFlight() {
            note(String(format: "checkpoint of step %d waited %.2f s for the checkpoint of step %d to finish", step, waited.seconds, waited.step))
        }
        try checkpoints.checkFailures()
        checkpoints.submit(try checkpointSnapshot(validationLoss: validationLoss))
    }

    /// This rank's part of the checkpoint of this step. Every rank holds the whole student;
    /// rank 0 writes it, as a normal checkpoint (its run.yaml the student's run config, so
    /// eval, generate and ckpt read it), plus `distill_progress.json` and the distiller's state
    /// (`distill_state.safetensors`: student, moments, counters) for an exact resume. The
    /// optimizer file a checkpoint needs holds the moments of the student's parameters that
    /// the distiller has (the current stage's), zeros for the others. The other ranks deliver
    /// empty parts.
    func checkpointSnapshot(validationLoss: Double? = nil) throws -> CheckpointShardSnapshot {
        let g = step
        guard isReporter else {
            return CheckpointShardSnapshot(step: g, rank: world.rank, ranks: world.size, model: StateDict(), optimizer: StateDict(), shards: [:])
        }
        let model = student.parameters.stateDict()
        let state = exportDistillerState()
        var moments: [(String, Tensor)] = [], shards: [String: TensorShard] = [:], weightMap: [String: String] = [:]
        let file = CheckpointLayout.modelFile(rank: 0, ranks: world.size)
        for (name, tensor) in model.entries {
            for suffix in [".exp_avg", ".exp_avg_sq"] {
                let moment = momentName(name, suffix: suffix).flatMap { state[$0] }
                moments.append((name + suffix, moment?.shape == tensor.shape ? moment! : Tensor(zeros: tensor.shape)))
            }
            shards[name] = TensorShard(globalShape: tensor.shape, offset: tensor.shape.map { _ in 0 }, axis: nil)
            weightMap[name] = file
        }
        let trainerState = TrainerState(step: g, seed: UInt64(config.train.seed), samplesSeen: batches.samplesSeen,
                                        tokensSeen: batches.samplesSeen * config.data.seqLen, configHash: studentConfig.numericHash,
                                        dataParallel: world.size, sequenceParallel: 1, expertParallel: 1, validationLoss: validationLoss)
        var metadata = try CheckpointMetadata.files(weightMap: weightMap, shapes: Dictionary(uniqueKeysWithValues: model.entries.map { ($0.name, $0.tensor.shape) }),
                                                    state: trainerState, runConfig: studentConfig.yaml,
                                                    huggingFaceConfig: student.config.huggingFaceConfig)
        let progress = DistillProgress(teacher: teacherCheckpoint.path, stage: stage, stageStep: stageStep, step: g, samplesSeen: batches.samplesSeen)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        metadata.append(CheckpointFile(name: DistillProgress.fileName, data: try encoder.encode(progress)))
        metadata.append(CheckpointFile(name: DistillProgress.stateFileName, data: try SafeTensors.encode(state, metadata: ["format": "tessera-distill"])))
        return CheckpointShardSnapshot(step: g, rank: 0, ranks: world.size, model: model, optimizer: StateDict(moments), shards: shards,
                                       metadataFiles: metadata)
    }

    /// Loads the newest complete checkpoint of the run: rank 0 reads it (checksums checked)
    /// and checks that it is a distillation of this config; every rank receives the
    /// distiller's state and the progress. Returns its step, or nil when there is none.
    func resumeFromLatest() throws -> Int? {
        var progressBytes: [UInt8] = [], stateBytes: [UInt8] = []
        let now = studentConfig
        let loaded = try checkpoints.loadLatest { url, contents in
            let fm = FileManager.default
            let progressURL = url.appendingPathComponent(DistillProgress.fileName)
            guard let progress = fm.contents(atPath: progressURL.path) else {
                throw DistillRunError.notADistillCheckpoint(path: url.path, reason: "it has no \(DistillProgress.fileName)")
            }
            guard (try? JSONDecoder().decode(DistillProgress.self, from: progress)) != nil else {
                throw CheckpointError.corrupt(path: progressURL.path, reason: "not a distillation progress record")
            }
            guard let state = fm.contents(atPath: url.appendingPathComponent(DistillProgress.stateFileName).path) else {
                throw DistillRunError.notADistillCheckpoint(path: url.path, reason: "it has no \(DistillProgress.stateFileName)")
            }
            let saved = try RunConfig(resolvedYAML: contents.runConfig, source: url.appendingPathComponent("run.yaml").path)
            if let change = DistillRunConfig.numericDifference(saved: saved, now: now) {
                throw DistillRunError.configChanged(checkpoint: url.path, key: change.key, saved: change.saved, now: change.now)
            }
            progressBytes = Array(progress)
            stateBytes = Array(state)
        }
        guard loaded.found else { return nil }
        let progressData = Data(try world.broadcastBytes(progressBytes, root: 0))
        let stateData = Data(try world.broadcastBytes(stateBytes, root: 0))
        let progress = try JSONDecoder().decode(DistillProgress.self, from: progressData)
        let source = checkpointLocation + "/" + CheckpointLayout.directoryName(step: progress.step) + "/" + DistillProgress.stateFileName
        try restoreDistillerState(try SafeTensors.decode(stateData, path: source).tensors, source: source)
        batches.samplesSeen = progress.samplesSeen
        (stage, stageStep) = (progress.stage, progress.stageStep)
        let end = globalStep(stage: 3, stageStep: steps(ofStage: 3))
        if progress.step >= end {
            throw DistillRunError.alreadyFinished(checkpoint: checkpointLocation + "/" + CheckpointLayout.directoryName(step: progress.step), step: progress.step)
        }
        return progress.step
    }
}
