import Collectives
import Kernels
import Models
import TensorCore
import Training
import TrainingConfig

/// MOHAWK distillation of a transformer teacher into a Mamba-2 (or hybrid) student.
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
///
/// Stage 2 (`stage2Step`, Distiller+Stage2.swift) aligns each Mamba layer's block output with
/// the teacher's; stage 3 (`stage3Step`, Distiller+Stage3.swift) distils the logits end to end.
/// Each stage has its own `Optimizer` (AdamW moments and step counter); a run's checkpoint
/// carries the current stage's (DistillRun+Checkpoints.swift) for an exact resume.
///
/// Parallel like training: with a `grid` of N data ranks, every rank passes its own `batch`
/// sequences (its share of a global batch of N·batch); the trained parameters' gradients are
/// summed by `GradientReducer` (over the ranks their placement names) and scaled by 1/N in
/// each stage's `Optimizer` step, and the reported losses are averaged too, so every rank holds
/// the same student and N ranks compute what one rank would on the global batch (to Float32
/// summation order). Every rank must call the same steps in the same order.
///
/// With S sequence ranks (the grid's sequence axis), `nextBatch` still gives whole sequences;
/// each rank runs teacher and student on its zigzag positions (`SequenceSharding`; attention
/// ring or Ulysses, Mamba-2 passing its scan state, `SequencePieces`) and each loss is the rank's share of the
/// whole sum (its query rows in stage 1, its tokens in stages 2 and 3), summed over the
/// sequence ranks with the gradients (Distiller+Sequence.swift). With expert ranks, teacher
/// and student hold their experts' shard (models built on `grid`), exchanged in every pass.
public final class Distiller {
    public let teacher: TransformerLM
    public let student: TransformerLM
    public let settings: DistillSection
    /// Sequences per step (this rank's share) and tokens per sequence (the whole sequence).
    public let batch: Int, length: Int
    /// The global positions of this rank's tokens in each sequence (all of them without a
    /// sequence axis), and their count.
    public let positions: [Int]
    public var localLength: Int { positions.count }
    public let threads: KernelThreads
    /// The ranks and their axes (one rank when none was given).
    public let grid: ProcessGrid
    /// The student's Mamba layers (stages 1 and 2 train these).
    public let mambaLayers: [Int]
    /// The parameters stage 1 updates, by name (per Mamba layer: in_proj, conv1d weight and bias, D).
    public let stage1Parameters: [String]
    /// The parameters stage 2 updates: every parameter of the Mamba layers' mixers.
    public let stage2Parameters: [String]
    /// The parameters stage 3 updates: every student parameter (`distill.stage3_train = all`)
    /// or the mixers' (`mixers`), in the student's declaration order.
    public let stage3Parameters: [String]
    /// The optimizer of stage k at index k − 1 (AdamW, no weight decay by default): its own
    /// moments and step counter, updating only the stage's parameters.
    public let optimizers: [Optimizer]
    public var stage1StepsTaken: Int { optimizers[0].stepsTaken }
    public var stage2StepsTaken: Int { optimizers[1].stepsTaken }
    public var stage3StepsTaken: Int { optimizers[2].stepsTaken }
    let reducer: GradientReducer
    let nextBatch: () throws -> [Int32]

    /// `nextBatch` gives `batch × length` token ids per call (this rank's inputs to the
    /// teacher). The teacher must have attention in every layer where the student has a
    /// Mamba mixer, and the same vocabulary.
    public init(teacher: TransformerLM, student: TransformerLM, settings: DistillSection, batch: Int, length: Int,
                threads: KernelThreads = .single, grid: ProcessGrid? = nil, bucketBytes: Int = 4 << 20,
                stage1Rule: AdamW = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0),
                stage2Rule: AdamW = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0),
                stage3Rule: AdamW = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0),
                nextBatch: @escaping () throws -> [Int32]) throws {
        let layers = StudentBuilder.mambaLayers(student.config)
        for layer in layers {
            guard layer < teacher.config.layers, teacher.config.blocks[layer].sequenceMixer.kind == .attention else {
                throw DistillError.teacherLayerNotAttention(layer: layer)
            }
        }
        guard teacher.config.vocabSize == student.config.vocabSize, teacher.config.dModel == student.config.dModel,
              teacher.config.layers == student.config.layers else {
            throw DistillError.shellMismatch(teacher: "\(teacher.config.layers) layers, d_model \(teacher.config.dModel), vocab \(teacher.config.vocabSize)",
                                             student: "\(student.config.layers) layers, d_model \(student.config.dModel), vocab \(student.config.vocabSize)")
        }
        self.teacher = teacher; self.student = student; self.settings = settings
        self.batch = batch; self.length = length; self.threads = threads
        self.grid = try grid ?? ProcessGrid(world: SingleProcessCommunicator(), layout: GridLayout(data: 1))
        if let problem = SequenceSharding.problem(length: length, ranks: self.grid.sequenceSize) {
            throw DistillError.sequenceDoesNotSplit(problem: problem)
        }
        positions = SequenceSharding.positions(length: length, ranks: self.grid.sequenceSize, rank: self.grid.sequenceIndex)
        self.nextBatch = nextBatch
        mambaLayers = layers
        stage1Parameters = layers.flatMap { layer in
            ["in_proj.weight", "conv1d.weight", "conv1d.bias", "D"].map { "model.layers.\(layer).mixer." + $0 }
        }
        let mixerNames = student.parameters.entries.map(\.name).filter { StudentBuilder.isMambaMixerParameter($0, config: student.config) }
        stage2Parameters = mixerNames
        switch settings.stage3TrainSet {
        case .all: stage3Parameters = student.parameters.entries.map(\.name)
        case .mixers: stage3Parameters = mixerNames
        }
        optimizers = zip([stage1Rule, stage2Rule, stage3Rule], [stage1Parameters, stage2Parameters, stage3Parameters]).map {
            Optimizer(rule: $0, parameters: student.parameters, training: $1)
        }
        reducer = GradientReducer(parameters: student.parameters, grid: self.grid, bucketBytes: bucketBytes, overlap: false)
        teacher.threads = threads
        student.threads = threads
    }

    /// The trained parameters of `stage` (1, 2 or 3).
    public func parameters(ofStage stage: Int) -> [String] {
        [stage1Parameters, stage2Parameters, stage3Parameters][stage - 1]
    }

    /// Each value summed over the sequence ranks (each holds its share of a sum) and averaged
    /// over the data ranks: the sum over every rank, in rank order, over N (Float64, the same
    /// bits on every rank).
    func averageOverRanks(_ values: [Double]) throws -> [Double] {
        let comm = grid.world
        guard comm.size > 1 else { return values }
        let bytes = values.count * 8
        var gathered = [Double](repeating: 0, count: values.count * comm.size)
        try values.withUnsafeBytes { input in
            try gathered.withUnsafeMutableBytes { try comm.allGather(input, counts: [Int](repeating: bytes, count: comm.size), into: $0) }
        }
        return values.indices.map { i in
            (0..<comm.size).reduce(0.0) { $0 + gathered[$1 * values.count + i] } / Double(grid.dataSize)
        }
    }

    /// Sums the gradients of `stage`'s parameters over the ranks (`GradientReducer`), then one
    /// AdamW step of them at `learningRate` on the mean (the sum times 1/N, as an averaging
    /// all-reduce computes it).
    func update(stage: Int, learningRate: Double) throws {
        let optimizer = optimizers[stage - 1]
        for entry in optimizer.trained.sorted(by: { $0.offset > $1.offset }) { reducer.ready(entry.range) }
        try reducer.finish()
        optimizer.step(learningRate: Float(learningRate), gradientScale: 1 / Float(grid.dataSize), threads: threads)
    }

    /// The teacher's mixer inputs (B·T, d) and attention probabilities (B, H, T, T) of `tokens`,
    /// by layer, for the student's Mamba layers.
    /// With the sequence sharded, both are of the whole sequences: the inputs gathered from the
    /// sequence ranks and the probabilities computed from them (`wholeSequenceTargets`).
    public func teacherTargets(tokens: [Int32]) throws -> [Int: (input: [Float], attention: [Float])] {
        if grid.sequenceSize > 1 { return try wholeSequenceTargets(tokens: tokens) }
        return try teacherCaptures(tokens: tokens, .sequenceMixerInput, .attentionProbabilities).mapValues { (input: $0.0, attention: $0.1) }
    }

    /// What the teacher's pass over this rank's positions of `tokens` (B × T) reports at
    /// capture points `first` and `second` (nil: only `first`, the second left empty), by
    /// layer, for each of the student's Mamba layers (a layer missing either is not an
    /// attention layer the student can learn from).
    func teacherCaptures(tokens: [Int32], _ first: CapturePoint, _ second: CapturePoint?) throws -> [Int: ([Float], [Float])] {
        guard tokens.count == batch * length else { throw DistillError.badBatch(tokens: tokens.count, batch: batch, length: length) }
        let wanted = Set(mambaLayers)
        var firsts: [Int: [Float]] = [:], seconds: [Int: [Float]] = [:]
        teacher.capture = { layer, point, values, _ in
            guard wanted.contains(layer) else { return }
            if point == first { firsts[layer] = Array(values) } else if point == second { seconds[layer] = Array(values) }
        }
        defer { teacher.capture = nil }
        _ = try teacher.logits(tokens: local(tokens), batch: batch, length: localLength, positions: positions)
        if second == nil { for layer in firsts.keys { seconds[layer] = [] } }
        var out: [Int: ([Float], [Float])] = [:]
        for layer in mambaLayers {
            guard let a = firsts[layer], let b = seconds[layer] else { throw DistillError.teacherLayerNotAttention(layer: layer) }
            out[layer] = (a, b)
        }
        return out
    }

    /// Stage-1 loss of `layer` for the mixer input `input` (B·T, d) against `target`
    /// (B, H, T, T): (1/(B·H)) Σ ‖M − target‖²_F. With `accumulateGradients`, adds its
    /// gradient to the student's M-shaping parameters. `rows`: the query rows (positions) whose
    /// terms count (nil: all; a sequence rank's own, whose shares sum to the whole).
    public func stage1Loss(layer: Int, input: [Float], target: [Float], rows: [Int]? = nil, accumulateGradients: Bool = false) -> Double {
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
            let counted = rows.map { Set($0) }
            target.withUnsafeBufferPointer { a in
                let m = matrix.pointer
                for row in 0..<(count / length) {   // (b, h, l) in order; row l of M is query position l
                    let range = (row * length)..<((row + 1) * length)
                    guard counted?.contains(row % length) ?? true else {
                        (m + range.lowerBound).update(repeating: 0, count: length)
                        continue
                    }
                    for i in range {
                        let difference = m[i] - a[i]
                        loss += Double(difference) * Double(difference)
                        m[i] = Float(2 * scale) * difference   // dM, in place
                    }
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
    /// the update (averaged over ranks), then one AdamW step of `stage1Parameters` at
    /// `distill.stage1_lr` on the gradients averaged over ranks.
    @discardableResult
    public func stage1Step() throws -> [Double] {
        let tokens = try nextBatch()
        let targets = try teacherTargets(tokens: tokens)
        student.parameters.zeroGradients()
        let rows = grid.sequenceSize > 1 ? positions : nil
        let losses = mambaLayers.map { layer in
            stage1Loss(layer: layer, input: targets[layer]!.input, target: targets[layer]!.attention, rows: rows, accumulateGradients: true)
        }
        let averaged = try averageOverRanks(losses)
        try update(stage: 1, learningRate: settings.stage1Lr)
        return averaged
    }

    /// One step of `stage` (1, 2 or 3): the per-layer losses of stages 1 and 2, or
    /// [kd, data, total] of stage 3, each before the update.
    @discardableResult
    public func step(stage: Int) throws -> [Double] {
        switch stage {
        case 1: return try stage1Step()
        case 2: return try stage2Step()
        case 3:
            let losses = try stage3Step()
            return [losses.kd, losses.data, losses.total]
        default: throw DistillError.noSuchStage(stage)
        }
    }
}
