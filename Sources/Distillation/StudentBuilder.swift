import Collectives
import Models
import TensorCore
import Training
import TrainingConfig

/// Builds a MOHAWK student from a transformer teacher: the teacher's shell (embeddings, norms,
/// feed-forward — dense or mixture of experts — and LM head) with every attention layer
/// replaced by Phi-Mamba's discrete Mamba-2 mixer, except the layers kept (a hybrid).
public enum StudentBuilder {
    /// The student's model: the teacher's, with each layer's sequence mixer turned into
    /// `.mamba2(Mamba2Spec(heads: teacher heads, headDim: teacher head dim, chunkSize:))`
    /// (state size = head dim, conv width 4) except the layers in `keepAttention`.
    public static func studentConfig(teacher: ModelConfig, keepAttention: DistillLayerList, chunkSize: Int) throws -> ModelConfig {
        if let layer = keepAttention.layers.first(where: { $0 >= teacher.layers }) {
            throw DistillError.keptLayerOutOfRange(layer: layer, layers: teacher.layers)
        }
        var student = teacher
        for layer in teacher.blocks.indices where !keepAttention.layers.contains(layer) {
            guard let attention = teacher.blocks[layer].sequenceMixer.attention else {
                throw DistillError.teacherLayerNotAttention(layer: layer)
            }
            student.blocks[layer].sequenceMixer = .mamba2(Mamba2Spec(heads: attention.heads, headDim: attention.headDim,
                                                                     chunkSize: chunkSize))
        }
        return student
    }

    /// The student's run config: the teacher's (`teacher`, its run.yaml) with the model keys
    /// that make every layer but `distill.keep_attention` a Mamba-2 mixer of chunk
    /// `distill.chunk_size` (`model.sequence_mixer: mamba2`, `model.attention_layers`,
    /// `model.ssm_chunk_size`), so the student's checkpoints describe it to every loader. Its
    /// `modelConfig` equals `studentConfig(teacher: teacher.modelConfig, ...)`.
    public static func studentRunConfig(teacher: RunConfig, settings: DistillSection) throws -> RunConfig {
        guard let keep = DistillLayerList(settings.keepAttention) else {
            throw DistillError.badLayerList(key: "distill.keep_attention", value: settings.keepAttention)
        }
        if teacher.model.sequenceMixer != "attention" {
            let kept = Set(DistillLayerList(teacher.model.attentionLayers)?.layers ?? [])
            let layer = (0..<teacher.model.layers).first { !kept.contains($0) } ?? 0
            throw DistillError.teacherLayerNotAttention(layer: layer)
        }
        _ = try studentConfig(teacher: teacher.modelConfig, keepAttention: keep, chunkSize: settings.chunkSize)
        var student = teacher
        student.model.sequenceMixer = SequenceMixerKind.mamba2.name
        student.model.attentionLayers = keep.description
        student.model.ssmChunkSize = settings.chunkSize
        student.distill = settings
        return try student.validated()
    }

    /// The student of `teacher` (whose weights are `teacherWeights`, every tensor by its
    /// Hugging Face name, e.g. `CheckpointContents.model`): built from `studentConfig` with
    /// initial values from `seed`, then every parameter the teacher has under the same name
    /// (everything but the Mamba mixers) overwritten with the teacher's values. `source` names
    /// the weights in errors. On `grid`, the student holds this rank's experts (as a model
    /// built on it does) and its initial values do not depend on the layout.
    public static func build(teacher: ModelConfig, teacherWeights: StateDict, keepAttention: DistillLayerList,
                             chunkSize: Int, seed: UInt64, source: String, grid: ProcessGrid? = nil) throws -> TransformerLM {
        let config = try studentConfig(teacher: teacher, keepAttention: keepAttention, chunkSize: chunkSize)
        let student = try TransformerLM(config: config, seed: seed, grid: grid)
        let parameters = student.parameters
        for entry in parameters.entries {
            let isMixer = isMambaMixerParameter(entry.name, config: config)
            guard let tensor = teacherWeights[entry.name] else {
                if isMixer { continue }
                throw DistillError.missingTeacherTensor(name: entry.name, source: source)
            }
            guard !isMixer else { continue }
            guard tensor.shape == entry.shape else {
                throw DistillError.teacherTensorShape(name: entry.name, expected: entry.shape, found: tensor.shape, source: source)
            }
            tensor.withUnsafeBufferPointer { parameters.value(entry.name).update(from: $0.baseAddress!, count: entry.count) }
        }
        return student
    }

    /// The student built from a teacher model's own parameters (a teacher in memory).
    public static func build(teacher: TransformerLM, keepAttention: DistillLayerList, chunkSize: Int, seed: UInt64) throws -> TransformerLM {
        try build(teacher: teacher.config, teacherWeights: teacher.parameters.stateDict(), keepAttention: keepAttention,
                  chunkSize: chunkSize, seed: seed, source: "teacher")
    }

    /// Whether `name` is a parameter of a layer's Mamba-2 mixer in `config` (kept at its init).
    public static func isMambaMixerParameter(_ name: String, config: ModelConfig) -> Bool {
        mambaLayers(config).contains { name.hasPrefix("model.layers.\($0).mixer.") }
    }

    /// The layers whose sequence mixer is Mamba-2.
    public static func mambaLayers(_ config: ModelConfig) -> [Int] {
        config.mambaLayers
    }
}
