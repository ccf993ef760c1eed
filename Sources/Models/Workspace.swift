import Kernels
import TensorCore

/// Activations saved by the forward pass and scratch for the backward pass, for one
/// (batch, length). Sizes in comments use N = batch × length tokens.
final class Workspace {
    let batch: Int, length: Int
    let attention: CausalAttention
    let ropeCos: [Float], ropeSin: [Float]
    let positionOffset: Int

    struct Layer {
        let input: FloatBuffer        // (N, d) residual stream entering the block
        let norm1: FloatBuffer        // (N, d)
        let rstd1: FloatBuffer        // (N)
        let q: FloatBuffer            // (N, Hq·D) after RoPE
        let k: FloatBuffer            // (N, Hkv·D) after RoPE
        let v: FloatBuffer            // (N, Hkv·D)
        let attended: FloatBuffer     // (N, Hq·D) attention output before o_proj
        let probabilities: FloatBuffer // (B, Hq, T, T)
        let middle: FloatBuffer       // (N, d) residual after attention
        let norm2: FloatBuffer        // (N, d)
        let rstd2: FloatBuffer        // (N)
        let gate: FloatBuffer         // (N, F)
        let up: FloatBuffer           // (N, F)
        let hidden: FloatBuffer       // (N, F) silu(gate) ⊙ up
    }

    let layers: [Layer]
    let output: FloatBuffer        // (N, d) residual after the last block
    let finalNorm: FloatBuffer     // (N, d)
    let finalRstd: FloatBuffer     // (N)
    let logits: FloatBuffer        // (N, V); holds dLogits after the loss
    let tokenIDs: UnsafeMutablePointer<Int32>

    // Backward scratch.
    let dResidual: FloatBuffer     // (N, d) gradient of the residual stream
    let dNorm: FloatBuffer         // (N, d)
    let dAttended: FloatBuffer     // (N, Hq·D)
    let dq: FloatBuffer, dk: FloatBuffer, dv: FloatBuffer
    let dGate: FloatBuffer, dUp: FloatBuffer, dHidden: FloatBuffer  // (N, F)

    init(config c: ModelConfig, batch: Int, length: Int, positionOffset: Int = 0) {
        self.batch = batch
        self.length = length
        self.positionOffset = positionOffset
        let n = batch * length, d = c.dModel, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, f = c.ffnHidden
        attention = CausalAttention(batch: batch, length: length, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        (ropeCos, ropeSin) = RoPE.tables(positions: Array(positionOffset..<(positionOffset + length)), headDim: c.headDim, theta: c.ropeTheta)
        layers = (0..<c.layers).map { _ in
            Layer(input: FloatBuffer(count: n * d), norm1: FloatBuffer(count: n * d), rstd1: FloatBuffer(count: n),
                  q: FloatBuffer(count: n * qd), k: FloatBuffer(count: n * kvd), v: FloatBuffer(count: n * kvd),
                  attended: FloatBuffer(count: n * qd), probabilities: FloatBuffer(count: batch * c.heads * length * length),
                  middle: FloatBuffer(count: n * d), norm2: FloatBuffer(count: n * d), rstd2: FloatBuffer(count: n),
                  gate: FloatBuffer(count: n * f), up: FloatBuffer(count: n * f), hidden: FloatBuffer(count: n * f))
        }
        output = FloatBuffer(count: n * d)
        finalNorm = FloatBuffer(count: n * d)
        finalRstd = FloatBuffer(count: n)
        logits = FloatBuffer(count: n * c.vocabSize)
        tokenIDs = .allocate(capacity: max(n, 1))
        dResidual = FloatBuffer(count: n * d)
        dNorm = FloatBuffer(count: n * d)
        dAttended = FloatBuffer(count: n * qd)
        dq = FloatBuffer(count: n * qd); dk = FloatBuffer(count: n * kvd); dv = FloatBuffer(count: n * kvd)
        dGate = FloatBuffer(count: n * f); dUp = FloatBuffer(count: n * f); dHidden = FloatBuffer(count: n * f)
    }

    deinit { tokenIDs.deallocate() }
}
