import Kernels
import TensorCore

/// The feed-forward layer on any rows (one token at inference), with buffers from the inference
/// context's scratch: the training cache is left alone.
extension SwiGLUFeedForward: RowwiseChannelMixer {
    func forwardRows(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, rows: Int,
                     parameters: ParameterSet, prefix: String, context c: DecodeContext) {
        let (d, f) = (dModel, hidden)
        let gate = c.scratch.buffer("rows.gate", count: rows * f)
        let up = c.scratch.buffer("rows.up", count: rows * f)
        Matmul.linearForward(x: x, weight: parameters.value(prefix + "mlp.gate_proj.weight"), y: gate, rows: rows,
                             inFeatures: d, outFeatures: f, threads: c.threads)
        Matmul.linearForward(x: x, weight: parameters.value(prefix + "mlp.up_proj.weight"), y: up, rows: rows,
                             inFeatures: d, outFeatures: f, threads: c.threads)
        SwiGLU.forward(gate: gate, up: up, out: gate, count: rows * f, threads: c.threads)
        Matmul.gemm(transposeA: false, transposeB: true, m: rows, n: d, k: f, a: gate, lda: f,
                    b: parameters.value(prefix + "mlp.down_proj.weight"), ldb: f, beta: 1, c: out, ldc: d, threads: c.threads)
    }
}
