import Kernels
import Models
import TensorCore

/// MOHAWK distillation of a transformer teacher into a Mamba-2 (or hybrid) student, one rank.
///
/// Stage 1, matrix orientation (`stage1Step`): for each student Mamba layer L, the teacher's
/// forward pass gives that layer's attention input u (the normalised hidden states, capture
/// point `.sequenceMixerInput`) and its attention probabilities A (B, H, T, T); the student's
/// mixer materialises its mixing matrix M(u) (D on the diagonal, `Mamba2Mixer.mixingMatrix`)
/// on the same u, and
///
///     loss_L = (1 / (B·H)) Σ_{b,h} ‖M_bh − A_bh‖²_F        (squared Frobenius, mean over batch·heads)
///
/// Only the parameters that shape M get gradient (in_proj's B, C, A_log rows, the
/// convolution's B and C channels, D); AdamW steps exactly the Mamba layers' `in_proj.weight`,
/// `conv1d.weight`, `conv1d.bias` and `D` at `distill.stage1_lr`, constant, without weight
/// decay, so the x and z rows and channels (zero gradient) stay bit for bit. Layers are
/// independent: each sees the teacher's input, not the student's.
public final class Distiller {
    public let teacher: TransformerLM
    public let student: TransformerLM
    public let settings: DistillSection
    /// Sequences per step and tokens per sequence.
    public let batch: Int, length: Int
    public let threads: KernelThreads
    /// The student's Mamba layers (stage 1 trains these).
    public let mambaLayers: [Int]
    /// The parameters stage 1 updates, by name (per Mamba layer: in_proj, conv1d weight and bias, D).
    public let stage1Parameters: [String]
    /// AdamW of stage 1 (no weight decay).
    public let stage1Rule: AdamW
    public private(set) var stage1StepsTaken = 0
    private let nextBatch: () throws -> [Int32]
    private var moments: [String: (m: FloatBuffer, v: FloatBuffer)] = [:]

    /// `nextBatch` gives `batch × length` token ids per call (the teacher's inputs). The
    /// teacher must have attention in every layer where the student has a Mamba mixer.
    public init(teacher: TransformerLM, student: TransformerLM, settings: DistillSection, batch: Int, length: Int,
                threads: KernelThreads = .single, stage1Rule: AdamW = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0),
                nextBatch: @escaping () throws -> [Int32]) throws {
        let layers = StudentBuilder.mambaLayers(student.config)
        for layer in layers {
            guard layer < teacher.config.layers, case .attention = teacher.config.blocks[layer].sequenceMixer else {
                throw DistillError.teacherLayerNotAttention(layer: layer)
            }
        }
        self.teacher = teacher; self.student = student; self.settings = settings
        self.batch = batch; self.length = length; self.threads = threads
        self.stage1Rule = stage1Rule; self.nextBatch = nextBatch
        mambaLayers = layers
        stage1Parameters = layers.flatMap { layer in
            ["in_proj.weight", "conv1d.weight", "conv1d.bias", "D"].map { "model.layers.\(layer).mixer." + $0 }
        }
        teacher.threads = threads
        student.threads = threads
    }

    /// The teacher's mixer inputs (B·T, d) and attention probabilities (B, H, T, T) of `tokens`,
    /// by layer, for the student's Mamba layers.
    public func teacherTargets(tokens: [Int32]) throws -> [Int: (input: [Float], attention: [Float])] {
        guard tokens.count == batch * length else { throw DistillError.badBatch(tokens: tokens.count, batch: batch, length: length) }
        let wanted = Set(mambaLayers)
        var inputs: [Int: [Float]] = [:], attention: [Int: [Float]] = [:]
        teacher.capture = { layer, point, values, _ in
            guard wanted.contains(layer) else { return }
            switch point {
            case .sequenceMixerInput: inputs[layer] = Array(values)
            case .attentionProbabilities: attention[layer] = Array(values)
            default: break
            }
        }
        defer { teacher.capture = nil }
        _ = teacher.logits(tokens: tokens, batch: batch, length: length)
        if let failure = teacher.passFailure { throw failure }
        var out: [Int: (input: [Float], attention: [Float])] = [:]
        for layer in mambaLayers {
            guard let x = inputs[layer], let a = attention[layer] else { throw DistillError.teacherLayerNotAttention(layer: layer) }
            out[layer] = (x, a)
        }
        return out
    }

    /// Stage-1 loss of `layer` for the mixer input `input` (B·T, d) against `target`
    /// (B, H, T, T): (1/(B·H)) Σ ‖M − target‖²_F. With `accumulateGradients`, adds its
    /// gradient to the student's M-shaping parameters.
    public func stage1Loss(layer: Int, input: [Float], target: [Float], accumulateGradients: Bool = false) -> Double {
        guard let mixer = student.blocks[layer].mamba2Mixer else { preconditionFailure("layer \(layer) of the student is not Mamba-2") }
        let heads = mixer.spec.heads, count = batch * heads * length * length
        precondition(input.count == batch * length * student.config.dModel && target.count == count,
                     "stage1Loss: input (B·T, d) and target (B, H, T, T) sizes")
        let context = PassContext(batch: batch, length: length, threads: threads)
        let matrix = FloatBuffer(count: count)
        var loss = 0.0
        input.withUnsafeBufferPointer { x in
            mixer.mixingMatrix(x.baseAddress!, matrix: matrix.pointer, includeSkip: true, context: context)
            let scale = 1 / Double(batch * heads)
            target.withUnsafeBufferPointer { a in
                let m = matrix.pointer
                for i in 0..<count {
                    let difference = m[i] - a[i]
                    loss += Double(difference) * Double(difference)
                    m[i] = Float(2 * scale) * difference   // dM, in place
                }
            }
            loss *= scale
            if accumulateGradients {
                mixer.mixingMatrixBackward(matrix.pointer, dx: nil, includeSkip: true, context: context)
            }
        }
        return loss
    }

    /// One stage-1 step on the next batch: per-layer losses (in `mambaLayers` order) before
    /// the update, then one AdamW step of `stage1Parameters` at `distill.stage1_lr`.
    @discardableResult
    public func stage1Step() throws -> [Double] {
        let tokens = try nextBatch()
        let targets = try teacherTargets(tokens: tokens)
        student.parameters.zeroGradients()
        let losses = mambaLayers.map { layer in
            stage1Loss(layer: layer, input: targets[layer]!.input, target: targets[layer]!.attention, accumulateGradients: true)
        }
        stage1StepsTaken += 1
        let p = student.parameters
        for name in stage1Parameters {
            let entry = p.entry(name)
            let state = moments[name] ?? (m: FloatBuffer(count: entry.count), v: FloatBuffer(count: entry.count))
            moments[name] = state
            stage1Rule.update(parameters: p.value(name), gradients: p.gradient(name), m: state.m.pointer, v: state.v.pointer,
                              count: entry.count, step: stage1StepsTaken, learningRate: Float(settings.stage1Lr),
                              decay: entry.decays, threads: threads)
        }
        return losses
    }
}
