import Models
import TensorCore
import Training

/// Stage 2 of MOHAWK, hidden-state alignment.
///
/// For each student Mamba layer L, the teacher's forward pass gives the residual stream
/// entering block L (capture point `.blockInput`) and the one leaving it (`.blockOutput`).
/// The student's block L runs alone on the teacher's input (`TransformerLM.blockForward`), so
/// layers train independently, and
///
///     loss_L = (1 / (B·T)) Σ_tokens ‖s_t − h_t‖₂      (plain L2 norm per token, mean over tokens)
///
/// with s_t the student block's output and h_t the teacher's, both d_model wide. This is
/// Phi-Mamba's stage-2 distance (`torch.norm(..., p=2, dim=-1).mean()`); its gradient per
/// token is (s_t − h_t) / (‖s_t − h_t‖ · B·T), taken as 0 for a token whose difference is
/// exactly 0. The unsquared norm weights every token alike whatever the scale of its residual
/// stream (the squared one would let the largest tokens dominate).
///
/// What is matched is the whole block's output (the residual stream after the feed-forward),
/// as MOHAWK aligns block outputs: the norms and the feed-forward — copied from the teacher —
/// are frozen, and the gradient reaches the mixer through them. (Phi's blocks are parallel, so
/// there matching the block equals matching the mixer output; in this Llama-style sequential
/// block the block output is what the next layer sees.) AdamW steps only `stage2Parameters`,
/// every parameter of the Mamba layers' mixers, at `distill.stage2_lr`; everything else keeps
/// its bits. Mixture-of-experts auxiliary losses take no part.
extension Distiller {
    /// The teacher's residual stream entering and leaving each student Mamba layer for
    /// `tokens` (each (B·T, d); this rank's rows with the sequence sharded).
    public func teacherBlockStates(tokens: [Int32]) throws -> [Int: (input: [Float], output: [Float])] {
        try teacherCaptures(tokens: tokens, .blockInput, .blockOutput).mapValues { (input: $0.0, output: $0.1) }
    }

    /// Stage-2 loss of `layer`: the student's block `layer` run on the residual stream `input`
    /// (B·T, d), against `target` (B·T, d): (1/(B·T)) Σ_t ‖out_t − target_t‖₂. With
    /// `accumulateGradients`, adds its gradient to the block's parameter gradients (all of
    /// them; `stage2Step` updates only the mixer's). With the sequence sharded, `input` and
    /// `target` are this rank's rows (B·localLength, d) and the loss their share of the sum.
    public func stage2Loss(layer: Int, input: [Float], target: [Float], accumulateGradients: Bool = false) throws -> Double {
        precondition(student.blocks[layer].mamba2Mixer != nil, "layer \(layer) of the student is not Mamba-2")
        let d = student.config.dModel, tokens = batch * localLength
        precondition(input.count == tokens * d && target.count == tokens * d, "stage2Loss: input and target must be (B·T, d)")
        var gradient = try student.blockForward(layer: layer, input: input, batch: batch, length: localLength, positions: positions)
        let scale = 1 / Double(batch * length)
        var loss = 0.0
        gradient.withUnsafeMutableBufferPointer { out in
            target.withUnsafeBufferPointer { h in
                for t in 0..<tokens {
                    var squares = 0.0
                    for i in (t * d)..<((t + 1) * d) {
                        let difference = Double(out[i]) - Double(h[i])
                        squares += difference * difference
                    }
                    let norm = squares.squareRoot()
                    loss += norm
                    let factor = norm > 0 ? scale / norm : 0
                    for i in (t * d)..<((t + 1) * d) { out[i] = Float((Double(out[i]) - Double(h[i])) * factor) }
                }
            }
        }
        if accumulateGradients { try student.blockBackward(layer: layer, outputGradient: gradient) }
        return loss * scale
    }

    /// One stage-2 step on the next batch: per-layer losses (in `mambaLayers` order, before
    /// the update, averaged over ranks), then one AdamW step of `stage2Parameters` at
    /// `distill.stage2_lr` on the gradients averaged over ranks.
    @discardableResult
    public func stage2Step() throws -> [Double] {
        let tokens = try nextBatch()
        let states = try teacherBlockStates(tokens: tokens)
        student.parameters.zeroGradients()
        let losses = try mambaLayers.map { layer in
            try stage2Loss(layer: layer, input: states[layer]!.input, target: states[layer]!.output, accumulateGradients: true)
        }
        let averaged = try averageOverRanks(losses)
        try update(stage: 2, learningRate: settings.stage2Lr)
        return averaged
    }
}
