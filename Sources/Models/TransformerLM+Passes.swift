import Kernels
import TensorCore

extension TransformerLM {
    func workspace(batch: Int, length: Int) -> Workspace {
        if let w = workspace, w.batch == batch, w.length == length { return w }
        let w = Workspace(config: config, batch: batch, length: length)
        workspace = w
        return w
    }

    /// Runs the forward pass on tokens (batch, length) and leaves logits (batch·length, V) in
    /// the workspace.
    @discardableResult
    func forward(tokens: [Int32], batch: Int, length: Int) -> Workspace {
        precondition(tokens.count == batch * length, "forward: \(tokens.count) tokens for batch \(batch) × length \(length)")
        let w = workspace(batch: batch, length: length)
        let c = config, n = batch * length, d = c.dModel, p = parameters.values.pointer
        let qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, f = c.ffnHidden
        tokens.withUnsafeBufferPointer { w.tokenIDs.update(from: $0.baseAddress!, count: n) }
        Embedding.forward(tokens: w.tokenIDs, count: n, table: p + embedOffset, dim: d, out: w.layers.first?.input.pointer ?? w.output.pointer)

        for (l, layer) in w.layers.enumerated() {
            let o = layerOffsets[l]
            RMSNorm.forward(x: layer.input.pointer, weight: p + o.inputNorm, y: layer.norm1.pointer, rstd: layer.rstd1.pointer,
                            rows: n, dim: d, eps: c.normEps)
            Matmul.linearForward(x: layer.norm1.pointer, weight: p + o.q, y: layer.q.pointer, rows: n, inFeatures: d, outFeatures: qd)
            Matmul.linearForward(x: layer.norm1.pointer, weight: p + o.k, y: layer.k.pointer, rows: n, inFeatures: d, outFeatures: kvd)
            Matmul.linearForward(x: layer.norm1.pointer, weight: p + o.v, y: layer.v.pointer, rows: n, inFeatures: d, outFeatures: kvd)
            RoPE.apply(layer.q.pointer, batch: batch, length: length, heads: c.heads, headDim: c.headDim, cos: w.ropeCos, sin: w.ropeSin)
            RoPE.apply(layer.k.pointer, batch: batch, length: length, heads: c.kvHeads, headDim: c.headDim, cos: w.ropeCos, sin: w.ropeSin)
            w.attention.forward(q: layer.q.pointer, k: layer.k.pointer, v: layer.v.pointer, o: layer.attended.pointer,
                                probabilities: layer.probabilities.pointer)
            // middle = input + attended · Woᵀ
            layer.middle.pointer.update(from: layer.input.pointer, count: n * d)
            Matmul.gemm(transposeA: false, transposeB: true, m: n, n: d, k: qd, a: layer.attended.pointer, lda: qd,
                        b: p + o.o, ldb: qd, beta: 1, c: layer.middle.pointer, ldc: d)
            RMSNorm.forward(x: layer.middle.pointer, weight: p + o.postNorm, y: layer.norm2.pointer, rstd: layer.rstd2.pointer,
                            rows: n, dim: d, eps: c.normEps)
            Matmul.linearForward(x: layer.norm2.pointer, weight: p + o.gate, y: layer.gate.pointer, rows: n, inFeatures: d, outFeatures: f)
            Matmul.linearForward(x: layer.norm2.pointer, weight: p + o.up, y: layer.up.pointer, rows: n, inFeatures: d, outFeatures: f)
            SwiGLU.forward(gate: layer.gate.pointer, up: layer.up.pointer, out: layer.hidden.pointer, count: n * f)
            // next = middle + hidden · Wdownᵀ
            let next = l + 1 < w.layers.count ? w.layers[l + 1].input.pointer : w.output.pointer
            next.update(from: layer.middle.pointer, count: n * d)
            Matmul.gemm(transposeA: false, transposeB: true, m: n, n: d, k: f, a: layer.hidden.pointer, lda: f,
                        b: p + o.down, ldb: f, beta: 1, c: next, ldc: d)
        }
        RMSNorm.forward(x: w.output.pointer, weight: p + finalNormOffset, y: w.finalNorm.pointer, rstd: w.finalRstd.pointer,
                        rows: n, dim: d, eps: c.normEps)
        Matmul.linearForward(x: w.finalNorm.pointer, weight: p + headOffset, y: w.logits.pointer, rows: n, inFeatures: d, outFeatures: c.vocabSize)
        return w
    }

    /// Σ over tokens of −log p(target): the forward pass only (evaluation).
    public func lossSum(tokens: [Int32], targets: [Int32], batch: Int, length: Int) -> Double {
        let w = forward(tokens: tokens, batch: batch, length: length)
        return targets.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(logits: w.logits.pointer, targets: $0.baseAddress!, rows: batch * length,
                                                vocab: config.vocabSize, dLogits: nil, gradientScale: 0)
        }
    }

    /// Logits (batch·length, V) of the forward pass.
    public func logits(tokens: [Int32], batch: Int, length: Int) -> [Float] {
        forward(tokens: tokens, batch: batch, length: length).logits.array
    }

    /// Forward and backward: adds ∂(gradientScale · Σ loss)/∂θ to `parameters.gradients` and
    /// returns Σ loss (Float64). `ready` is called with each parameter range whose gradient is
    /// final, in the order the backward pass finishes them (head first, embedding last), so a
    /// caller can start reducing gradients while the rest of the backward pass runs.
    @discardableResult
    public func lossAndGradients(tokens: [Int32], targets: [Int32], batch: Int, length: Int, gradientScale: Float,
                                 ready: ((Range<Int>) -> Void)? = nil) -> Double {
        let w = forward(tokens: tokens, batch: batch, length: length)
        let c = config, n = batch * length, d = c.dModel, p = parameters.values.pointer, g = parameters.gradients.pointer
        let qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, f = c.ffnHidden
        let total = targets.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(logits: w.logits.pointer, targets: $0.baseAddress!, rows: n, vocab: c.vocabSize,
                                                dLogits: w.logits.pointer, gradientScale: gradientScale)
        }
        let dLogits = w.logits.pointer

        // Head and final norm.
        Matmul.linearBackward(x: w.finalNorm.pointer, weight: p + headOffset, dy: dLogits, dx: w.dNorm.pointer,
                              dWeight: g + headOffset, rows: n, inFeatures: d, outFeatures: c.vocabSize)
        if !c.tieEmbeddings { ready?(parameters.entry("lm_head.weight").range) }
        RMSNorm.backward(x: w.output.pointer, weight: p + finalNormOffset, rstd: w.finalRstd.pointer, dy: w.dNorm.pointer,
                         dx: w.dResidual.pointer, dWeight: g + finalNormOffset, rows: n, dim: d)
        ready?(parameters.entry("model.norm.weight").range)

        for l in stride(from: w.layers.count - 1, through: 0, by: -1) {
            let layer = w.layers[l], o = layerOffsets[l]
            // Feed-forward: dResidual flows to `middle` unchanged and into down_proj.
            Matmul.linearBackward(x: layer.hidden.pointer, weight: p + o.down, dy: w.dResidual.pointer, dx: w.dHidden.pointer,
                                  dWeight: g + o.down, rows: n, inFeatures: f, outFeatures: d)
            SwiGLU.backward(gate: layer.gate.pointer, up: layer.up.pointer, dOut: w.dHidden.pointer,
                            dGate: w.dGate.pointer, dUp: w.dUp.pointer, count: n * f)
            Matmul.linearBackward(x: layer.norm2.pointer, weight: p + o.gate, dy: w.dGate.pointer, dx: w.dNorm.pointer,
                                  dWeight: g + o.gate, rows: n, inFeatures: d, outFeatures: f)
            Matmul.linearBackward(x: layer.norm2.pointer, weight: p + o.up, dy: w.dUp.pointer, dx: w.dNorm.pointer,
                                  dWeight: g + o.up, rows: n, inFeatures: d, outFeatures: f, accumulateInput: true)
            RMSNorm.backward(x: layer.middle.pointer, weight: p + o.postNorm, rstd: layer.rstd2.pointer, dy: w.dNorm.pointer,
                             dx: w.dResidual.pointer, dWeight: g + o.postNorm, rows: n, dim: d, accumulate: true)

            // Attention: dResidual flows to `input` unchanged and into o_proj.
            Matmul.linearBackward(x: layer.attended.pointer, weight: p + o.o, dy: w.dResidual.pointer, dx: w.dAttended.pointer,
                                  dWeight: g + o.o, rows: n, inFeatures: qd, outFeatures: d)
            w.attention.backward(q: layer.q.pointer, k: layer.k.pointer, v: layer.v.pointer, o: layer.attended.pointer,
                                 probabilities: layer.probabilities.pointer, dO: w.dAttended.pointer,
                                 dq: w.dq.pointer, dk: w.dk.pointer, dv: w.dv.pointer)
            RoPE.apply(w.dq.pointer, batch: batch, length: length, heads: c.heads, headDim: c.headDim, cos: w.ropeCos, sin: w.ropeSin, inverse: true)
            RoPE.apply(w.dk.pointer, batch: batch, length: length, heads: c.kvHeads, headDim: c.headDim, cos: w.ropeCos, sin: w.ropeSin, inverse: true)
            Matmul.linearBackward(x: layer.norm1.pointer, weight: p + o.q, dy: w.dq.pointer, dx: w.dNorm.pointer,
                                  dWeight: g + o.q, rows: n, inFeatures: d, outFeatures: qd)
            Matmul.linearBackward(x: layer.norm1.pointer, weight: p + o.k, dy: w.dk.pointer, dx: w.dNorm.pointer,
                                  dWeight: g + o.k, rows: n, inFeatures: d, outFeatures: kvd, accumulateInput: true)
            Matmul.linearBackward(x: layer.norm1.pointer, weight: p + o.v, dy: w.dv.pointer, dx: w.dNorm.pointer,
                                  dWeight: g + o.v, rows: n, inFeatures: d, outFeatures: kvd, accumulateInput: true)
            RMSNorm.backward(x: layer.input.pointer, weight: p + o.inputNorm, rstd: layer.rstd1.pointer, dy: w.dNorm.pointer,
                             dx: w.dResidual.pointer, dWeight: g + o.inputNorm, rows: n, dim: d, accumulate: true)
            ready?(o.range)
        }
        Embedding.backward(tokens: w.tokenIDs, count: n, dOut: w.dResidual.pointer, dim: d, dTable: g + embedOffset)
        ready?(parameters.entry("model.embed_tokens.weight").range)
        return total
    }
}
