import Kernels
import TensorCore

/// Causal grouped-query self-attention with rotary positions (Hugging Face Llama's
/// `self_attn`): q, k, v projections, RoPE at the context's positions, attention, o_proj.
///
/// The attention itself is the materialised kernel (`CausalAttention`, probabilities kept for
/// the backward pass). Layouts: q (B·T, Hq·D), k and v (B·T, Hkv·D).
final class CausalSelfAttention: LayerComponent {
    let spec: AttentionSpec
    let dModel: Int
    let residualStd: Double
    private var q = BoundParameter(), k = BoundParameter(), v = BoundParameter(), o = BoundParameter()
    private var cache = ActivationCache()   // q, k, v, attended, probabilities
    private var kernel: CausalAttention?
    private var rope: (positions: [Int], cos: [Float], sin: [Float])?
    private var input: UnsafePointer<Float>?

    init(spec: AttentionSpec, dModel: Int, residualStd: Double) {
        self.spec = spec
        self.dModel = dModel
        self.residualStd = residualStd
    }

    private var queryWidth: Int { spec.heads * spec.headDim }
    private var kvWidth: Int { spec.kvHeads * spec.headDim }

    var declarations: [ParameterDeclaration] {
        [ParameterDeclaration("self_attn.q_proj.weight", [queryWidth, dModel], .normal(std: 0.02)),
         ParameterDeclaration("self_attn.k_proj.weight", [kvWidth, dModel], .normal(std: 0.02)),
         ParameterDeclaration("self_attn.v_proj.weight", [kvWidth, dModel], .normal(std: 0.02)),
         ParameterDeclaration("self_attn.o_proj.weight", [dModel, queryWidth], .normal(std: residualStd))]
    }

    func bind(to parameters: ParameterSet, prefix: String) {
        q = BoundParameter(parameters, prefix + "self_attn.q_proj.weight")
        k = BoundParameter(parameters, prefix + "self_attn.k_proj.weight")
        v = BoundParameter(parameters, prefix + "self_attn.v_proj.weight")
        o = BoundParameter(parameters, prefix + "self_attn.o_proj.weight")
    }

    private func prepare(_ context: PassContext) -> CausalAttention {
        let (B, T) = (context.batch, context.length)
        cache.ensure(rows: B * T, widths: [queryWidth, kvWidth, kvWidth, queryWidth, spec.heads * T])
        if kernel?.batch != B || kernel?.length != T {
            kernel = CausalAttention(batch: B, length: T, heads: spec.heads, kvHeads: spec.kvHeads, headDim: spec.headDim)
        }
        if rope?.positions != context.positions {
            let tables = RoPE.tables(positions: context.positions, headDim: spec.headDim, theta: spec.ropeTheta)
            rope = (context.positions, tables.cos, tables.sin)
        }
        return kernel!
    }

    func forward(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) {
        let attention = prepare(c)
        let (n, d, threads) = (c.rows, dModel, c.threads)
        let (qs, ks, vs, attended, probabilities) = (cache[0], cache[1], cache[2], cache[3], cache[4])
        input = x
        Matmul.linearForward(x: x, weight: q.value, y: qs, rows: n, inFeatures: d, outFeatures: queryWidth, threads: threads)
        Matmul.linearForward(x: x, weight: k.value, y: ks, rows: n, inFeatures: d, outFeatures: kvWidth, threads: threads)
        Matmul.linearForward(x: x, weight: v.value, y: vs, rows: n, inFeatures: d, outFeatures: kvWidth, threads: threads)
        rotate(qs, heads: spec.heads, context: c, inverse: false)
        rotate(ks, heads: spec.kvHeads, context: c, inverse: false)
        attention.forward(q: qs, k: ks, v: vs, o: attended, probabilities: probabilities, threads: threads)
        if let capture = c.capture {
            capture(layer, .attentionProbabilities, UnsafeBufferPointer(start: probabilities, count: attention.probabilityCount),
                    [c.batch, spec.heads, c.length, c.length])
        }
        // out += attended · Woᵀ
        Matmul.gemm(transposeA: false, transposeB: true, m: n, n: d, k: queryWidth, a: attended, lda: queryWidth,
                    b: o.value, ldb: queryWidth, beta: 1, c: out, ldc: d, threads: threads)
    }

    func backward(_ dOut: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) {
        guard let attention = kernel, let x = input else { preconditionFailure("CausalSelfAttention.backward before forward") }
        let (n, d, threads) = (c.rows, dModel, c.threads)
        let (qs, ks, vs, attended, probabilities) = (cache[0], cache[1], cache[2], cache[3], cache[4])
        let dAttended = c.scratch.buffer("attention.dAttended", count: n * queryWidth)
        let dq = c.scratch.buffer("attention.dq", count: n * queryWidth)
        let dk = c.scratch.buffer("attention.dk", count: n * kvWidth)
        let dv = c.scratch.buffer("attention.dv", count: n * kvWidth)
        Matmul.linearBackward(x: attended, weight: o.value, dy: dOut, dx: dAttended, dWeight: o.gradient,
                              rows: n, inFeatures: queryWidth, outFeatures: d, threads: threads)
        attention.backward(q: qs, k: ks, v: vs, o: attended, probabilities: probabilities, dO: dAttended,
                           dq: dq, dk: dk, dv: dv, threads: threads)
        rotate(dq, heads: spec.heads, context: c, inverse: true)
        rotate(dk, heads: spec.kvHeads, context: c, inverse: true)
        Matmul.linearBackward(x: x, weight: q.value, dy: dq, dx: dx, dWeight: q.gradient,
                              rows: n, inFeatures: d, outFeatures: queryWidth, threads: threads)
        Matmul.linearBackward(x: x, weight: k.value, dy: dk, dx: dx, dWeight: k.gradient,
                              rows: n, inFeatures: d, outFeatures: kvWidth, accumulateInput: true, threads: threads)
        Matmul.linearBackward(x: x, weight: v.value, dy: dv, dx: dx, dWeight: v.gradient,
                              rows: n, inFeatures: d, outFeatures: kvWidth, accumulateInput: true, threads: threads)
    }

    private func rotate(_ x: UnsafeMutablePointer<Float>, heads: Int, context c: PassContext, inverse: Bool) {
        RoPE.apply(x, batch: c.batch, length: c.length, heads: heads, headDim: spec.headDim, cos: rope!.cos, sin: rope!.sin,
                   inverse: inverse, threads: c.threads)
    }

    var matmulFlopsPerToken: Double { 2.0 * Double(dModel) * Double(2 * queryWidth + 2 * kvWidth) }

    /// Scores and values, causal (half of T×T on average).
    func sequenceFlopsPerToken(length: Int) -> Double { 2.0 * 2 * Double(spec.heads * spec.headDim) * Double(length) / 2 }
}
