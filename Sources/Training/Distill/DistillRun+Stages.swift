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
                      length: config.data.seqLen, threads: threads, nextBatch: { batches.next() })
    }

    /// One step of `stage`: per Mamba layer losses (stages 1 and 2) or kd, data, total (stage 3).
    func takeStep(stage: Int) throws -> [Double] {
        switch stage {
        case 1: return try distiller.stage1Step()
        default: throw DistillRunError.nothingToDistill(source: "stage \(stage) is not available in this build")
        }
    }

    /// The distiller's state for an exact resume.
    func exportDistillerState() -> StateDict { student.parameters.stateDict() }

    func restoreDistillerState(_ state: StateDict, source: String) throws {
        try student.parameters.load(state, source: source)
    }

    /// The optimizer moment in the distiller's state that a checkpoint's `NAME.exp_avg` /
    /// `NAME.exp_avg_sq` holds.
    func momentName(_ name: String, suffix: String) -> String? { nil }

    /// The run config a student checkpoint carries: the teacher's with `model.sequence_mixer:
    /// mamba2`, `model.attention_layers` (distill.keep_attention) and `model.ssm_chunk_size`
    /// (distill.chunk_size), so eval, generate and ckpt build the student from it.
    static func studentRunConfig(_ config: RunConfig) throws -> RunConfig {
        try StudentBuilder.studentRunConfig(teacher: config, settings: config.distill)
    }
}
