import Checkpointing
import Foundation
import TensorCore
import Training
import TrainingConfig

extension DistillRun {
    /// This rank's part of the checkpoint of this step (`TrainingCheckpoints.part`: the
    /// student once, the current stage's moments as the optimizer file, zeros for what the
    /// stage does not train). Rank 0 adds the student's run.yaml (so eval, generate and ckpt
    /// read it) and `distill_progress.json` (stage, step within it, data cursor: integers),
    /// which is all an exact resume needs. Every rank calls it.
    func checkpointPart(validationLoss: Double?) throws -> CheckpointPart {
        try TrainingCheckpoints.part(step: step, grid: grid, parameters: student.parameters, optimizer: distiller.optimizers[stage - 1]) { [self] weightMap in
            let state = TrainerState(step: step, seed: UInt64(config.train.seed), samplesSeen: batches.samplesSeen,
                                     tokensSeen: batches.samplesSeen * config.data.seqLen, configHash: studentConfig.numericHash,
                                     dataParallel: grid.dataSize, sequenceParallel: grid.sequenceSize, expertParallel: grid.size(of: .expert),
                                     validationLoss: validationLoss)
            let progress = DistillProgress(teacher: teacherCheckpoint.path, stage: stage, stageStep: stageStep, step: step, samplesSeen: batches.samplesSeen)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            return try CheckpointMetadata.files(weightMap: weightMap, shapes: Dictionary(uniqueKeysWithValues: student.parameters.entries.map { ($0.name, $0.shape) }),
                                                state: state, runConfig: studentConfig.yaml, huggingFaceConfig: student.config.huggingFaceConfig)
                + [CheckpointFile(name: DistillProgress.fileName, data: try encoder.encode(progress))]
        }
    }

    /// Loads the newest complete checkpoint of the run: rank 0 reads it (checksums checked),
    /// checks that it is a distillation of this config and loads the student and the stage's
    /// moments; every rank receives them and the progress. A checkpoint written before the
    /// run loop was shared (with `distill_state.safetensors`) reads the same way: its
    /// optimizer file holds the same moments. Returns its step, or nil when there is none.
    func resumeFromLatest() throws -> Int? {
        var progressBytes: [UInt8] = []
        let now = studentConfig
        let loaded = try checkpoints.loadLatest { [self] url, contents in
            let progressURL = url.appendingPathComponent(DistillProgress.fileName)
            guard let data = FileManager.default.contents(atPath: progressURL.path) else {
                throw DistillRunError.notADistillCheckpoint(path: url.path, reason: "it has no \(DistillProgress.fileName)")
            }
            guard let progress = try? JSONDecoder().decode(DistillProgress.self, from: data), (1...3).contains(progress.stage) else {
                throw CheckpointError.corrupt(path: progressURL.path, reason: "not a distillation progress record")
            }
            let saved = try RunConfig(resolvedYAML: contents.runConfig, source: url.appendingPathComponent("run.yaml").path)
            if let change = DistillRunConfig.numericDifference(saved: saved, now: now) {
                throw DistillRunError.configChanged(checkpoint: url.path, key: change.key, saved: change.saved, now: change.now)
            }
            let global = student.globalDeclarations
            try student.parameters.load(contents.model, source: url.path, global: global)
            try distiller.optimizers[progress.stage - 1].load(contents.optimizer, stepsTaken: progress.stageStep, source: url.path, global: global)
            progressBytes = Array(data)
        }
        guard loaded.found else { return nil }
        let progress = try JSONDecoder().decode(DistillProgress.self, from: Data(try world.broadcastBytes(progressBytes, root: 0)))
        let optimizers = distiller.optimizers
        try checkpoints.broadcast([student.parameters.values] + optimizers[progress.stage - 1].buffers)
        try ExpertShardTransfer(grid: grid, parameters: student.parameters, optimizer: optimizers[progress.stage - 1],
                                global: student.globalDeclarations).scatterFromReader(loaded.contents)
        for (k, optimizer) in optimizers.enumerated() {   // a stage's steps are all taken before the next starts
            optimizer.setStepsTaken(k + 1 < progress.stage ? steps(ofStage: k + 1) : k + 1 == progress.stage ? progress.stageStep : 0)
        }
        batches.samplesSeen = progress.samplesSeen
        (stage, stageStep) = (progress.stage, progress.stageStep)
        let end = globalStep(stage: 3, stageStep: steps(ofStage: 3))
        if progress.step >= end {
            throw DistillRunError.alreadyFinished(checkpoint: checkpointLocation + "/" + CheckpointLayout.directoryName(step: progress.step), step: progress.step)
        }
        return progress.step
    }
}
