import Foundation
import Kernels
import Models
import TensorCore
import Training

/// The losses of one stage-3 step (each a mean, averaged over ranks).
public struct Stage3Losses: Equatable, Sendable {
    /// τ² · KL(teacher ‖ student) at temperature τ, mean over tokens.
    public var kd: Double
    /// Next-token cross-entropy of the student on the data, mean over predicted tokens.
    public var data: Double
    /// kd + distill.data_loss_weight · data: what the step minimises.
    public var total: Double

    public init(kd: Double, data: Double, total: Double) { self.kd = kd; self.data = data; self.total = total }
}

/// Stage 3 of MOHAWK, end-to-end knowledge distillation.
///
/// Teacher and student run on the same tokens (B sequences of T). With τ = distill.temperature,
/// p = softmax(teacher logits / τ) and q = softmax(student logits / τ) at each position,
///
///     kd    = τ² · (1/(B·T)) Σ_positions KL(p ‖ q) = τ² · (1/(B·T)) Σ Σ_v p_v (log p_v − log q_v)
///     data  = (1/(B·(T−1))) Σ_{t < T−1} −log softmax(student logits_t)[token_{t+1}]
///     total = kd + distill.data_loss_weight · data
///
/// KD is the KL divergence rather than the cross-entropy −Σ p log q: they differ by the
/// teacher's entropy, which does not depend on the student, so the gradients are the same and
/// kd = 0 exactly when the student reproduces the teacher. The τ² factor (Hinton et al.)
/// keeps the gradient's size independent of τ: ∂kd/∂z = τ (q − p) / (B·T). The data loss
/// predicts each next token inside the sequence (the last position has no target: the
/// batch source gives B × T tokens, the same ones the other stages use); it is reported even
/// when its weight is 0.
///
/// `distill.stage3_train` picks the trained parameters: `all` (default; MOHAWK's stage 3
/// fine-tunes the whole network) or `mixers`. Mixture-of-experts auxiliary losses are not part
/// of the objective (the teacher's logits already distil the routing). AdamW at
/// `distill.stage3_lr`, own moments.
extension Distiller {
    /// The stage-3 losses of student logits against teacher logits (both (B·T, V) row-major)
    /// on `tokens` (B × T). With `gradient` (may alias `student`), writes ∂total/∂(student
    /// logits) there. Each row is computed on its own and the sums run in row order, so the
    /// result does not depend on the thread count.
    /// `positions`: the logits' rows are these positions of each sequence (nil: all of them,
    /// in order), `tokens` still the whole sequences; the losses are then those rows' share
    /// of the whole sums (normalised by B·T and B·(T−1)).
    public static func stage3Objective(student: UnsafePointer<Float>, teacher: UnsafePointer<Float>, tokens: [Int32],
                                       batch: Int, length: Int, positions: [Int]? = nil, vocab: Int, temperature: Double,
                                       dataLossWeight: Double, gradient: UnsafeMutablePointer<Float>?,
                                       threads: KernelThreads = .single) -> Stage3Losses {
        let held = positions ?? Array(0..<length)
        let rows = batch * held.count, tau = temperature
        let kdScale = 1 / Double(batch * length)
        let dataRows = batch * (length - 1)
        let dataScale = dataRows > 0 ? 1 / Double(dataRows) : 0
        var kdPerRow = [Double](repeating: 0, count: rows), dataPerRow = [Double](repeating: 0, count: rows)
        kdPerRow.withUnsafeMutableBufferPointer { kdRows in
            dataPerRow.withUnsafeMutableBufferPointer { dataRowsOut in
                let kdOut = kdRows.baseAddress!, ceOut = dataRowsOut.baseAddress!
                threads.forRanges(rows, minimumChunk: max(1, 16_384 / max(vocab, 1))) { range in
                    var logP = [Double](repeating: 0, count: vocab), logQ = [Double](repeating: 0, count: vocab)
                    var logS = [Double](repeating: 0, count: vocab)
                    for r in range {
                        let z = student + r * vocab, y = teacher + r * vocab
                        Self.logSoftmax(y, scale: 1 / tau, count: vocab, into: &logP)
                        Self.logSoftmax(z, scale: 1 / tau, count: vocab, into: &logQ)
                        var kl = 0.0
                        for v in 0..<vocab { kl += exp(logP[v]) * (logP[v] - logQ[v]) }
                        kdOut[r] = kl
                        let (t, b) = (held[r % held.count], r / held.count)
                        let hasTarget = t < length - 1
                        var target = -1
                        if hasTarget {
                            target = Int(tokens[b * length + t + 1])
                            Self.logSoftmax(z, scale: 1, count: vocab, into: &logS)
                            ceOut[r] = -logS[target]
                        }
                        guard let g = gradient.map({ $0 + r * vocab }) else { continue }
                        for v in 0..<vocab {
                            var value = tau * kdScale * (exp(logQ[v]) - exp(logP[v]))
                            if hasTarget { value += dataLossWeight * dataScale * (exp(logS[v]) - (v == target ? 1 : 0)) }
                            g[v] = Float(value)
                        }
                    }
                }
            }
        }
        let kd = tau * tau * kdScale * kdPerRow.reduce(0, +)
        let data = dataScale * dataPerRow.reduce(0, +)
        return Stage3Losses(kd: kd, data: data, total: kd + dataLossWeight * data)
    }

    /// log softmax(scale · x) of one row, in Float64.
    static func logSoftmax(_ x: UnsafePointer<Float>, scale: Double, count: Int, into out: inout [Double]) {
        var top = -Double.infinity
        for v in 0..<count { top = max(top, scale * Double(x[v])) }
        var sum = 0.0
        for v in 0..<count { out[v] = scale * Double(x[v]) - top; sum += exp(out[v]) }
        let logSum = log(sum)
        for v in 0..<count { out[v] -= logSum }
    }

    /// The stage-3 losses of this rank's `tokens` (B × T) for the current student; with
    /// `accumulateGradients`, adds ∂total/∂θ to every student parameter's gradient
    /// (`stage3Step` updates only `stage3Parameters`).
    public func stage3Loss(tokens: [Int32], accumulateGradients: Bool = false) throws -> Stage3Losses {
        guard tokens.count == batch * length else { throw DistillError.badBatch(tokens: tokens.count, batch: batch, length: length) }
        let mine = local(tokens), held = grid.sequenceSize > 1 ? positions : nil
        let teacherLogits = try teacher.logits(tokens: mine, batch: batch, length: localLength, positions: positions)
        let vocab = student.config.vocabSize
        let (tau, weight) = (settings.temperature, settings.dataLossWeight)
        var losses = Stage3Losses(kd: 0, data: 0, total: 0)
        if accumulateGradients {
            try teacherLogits.withUnsafeBufferPointer { y in
                _ = try student.lossAndGradients(tokens: mine, batch: batch, length: localLength, positions: positions) { logits in
                    losses = Self.stage3Objective(student: logits, teacher: y.baseAddress!, tokens: tokens, batch: batch, length: length,
                                                  positions: held, vocab: vocab, temperature: tau, dataLossWeight: weight, gradient: logits, threads: threads)
                    return losses.total
                }
            }
        } else {
            let logits = try student.logits(tokens: mine, batch: batch, length: localLength, positions: positions)
            logits.withUnsafeBufferPointer { z in
                teacherLogits.withUnsafeBufferPointer { y in
                    losses = Self.stage3Objective(student: z.baseAddress!, teacher: y.baseAddress!, tokens: tokens, batch: batch, length: length,
                                                  positions: held, vocab: vocab, temperature: tau, dataLossWeight: weight, gradient: nil, threads: threads)
                }
            }
        }
        return losses
    }

    /// One stage-3 step on the next batch: the losses before the update (averaged over ranks),
    /// then one AdamW step of `stage3Parameters` at `distill.stage3_lr` on the gradients
    /// averaged over ranks.
    @discardableResult
    public func stage3Step() throws -> Stage3Losses {
        let tokens = try nextBatch()
        student.parameters.zeroGradients()
        let local = try stage3Loss(tokens: tokens, accumulateGradients: true)
        let averaged = try averageOverRanks([local.kd, local.data, local.total])
        try update(stage: 3, learningRate: settings.stage3Lr)
        return Stage3Losses(kd: averaged[0], data: averaged[1], total: averaged[2])
    }
}
