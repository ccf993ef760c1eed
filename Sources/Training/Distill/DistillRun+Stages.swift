import Checkpointing
import Collectives
import Kernels
import Models
import TensorCore

// The distiller behind a run: built once, stepped by stage number, its state saved and restored.

extension DistillRun {
    /// The distiller on this rank: its batch is this rank's share of the global batch, from
    /// `batches` (the training split, as training samples it).
    static func makeDistiller(teacher: TransformerLM, student: TransformerLM, config: RunConfig, batches: DistillBatches,
                              threads: KernelThreads, world: Communicator) throws -> Distiller {
        try Distiller(teacher: teacher, student: student, settings: config.distill, batch: batches.data.localBatch,
                      length: config.data.seqLen, threads: threads, communicator: world.size > 1 ? world : nil, nextBatch: { batches.next() })
    }

    /// One step of `stage`: per Mamba layer losses (stages 1 and 2) or kd, data, total (stage 3).
    func takeStep(stage: Int) throws -> [Double] {
        try distiller.step(stage: stage)
    }

    /// The distiller's state for an exact resume (student, every stage's moments and counters).
    func exportDistillerState() -> StateDict { distiller.exportState() }

    /// Restores `exportDistillerState`'s tensors, read from `source` (named in errors).
    func restoreDistillerState(_ state: StateDict, source: String) throws {
        do { try distiller.restore(state: state) } catch {
            throw CheckpointError.corrupt(path: source, reason: "\(error)")
        }
    }

    /// The moment in the distiller's state that a checkpoint's `NAME.exp_avg` / `NAME.exp_avg_sq`
    /// holds: the current stage's (nil when the stage does not train NAME).
    func momentName(_ name: String, suffix: String) -> String? {
        guard (1...3).contains(stage), distiller.parameters(ofStage: stage).contains(name) else { return nil }
        return "distill.stage\(stage)" + suffix + "." + name
    }

    /// The run config a student checkpoint carries: the teacher's with `model.sequence_mixer:
    /// mamba2`, `model.attention_layers` (distill.keep_attention) and `model.ssm_chunk_size`
    /// (distill.chunk_size), so eval, generate and ckpt build the student from it.
    static func studentRunConfig(_ config: RunConfig) throws -> RunConfig {
        try StudentBuilder.studentRunConfig(teacher: config, settings: config.distill)
    }
}
