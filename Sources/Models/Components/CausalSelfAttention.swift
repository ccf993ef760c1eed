import Collectives
import Kernels
import TensorCore

/// Causal grouped-query self-attention with rotary positions (Hugging Face Llama's
/// `self_attn`): q, k, v projections, RoPE at the context's positions, attention, o_proj.
///
/// The attention itself is the kernel `spec.kernel` names: the flash kernel (`FlashAttention`,
/// masking by the context's positions, O and the logsumexp (B, H, T) kept for the backward
/// pass) or the materialised one (`CausalAttention`, probabilities (B, H, T, T) kept).
/// Layouts: q (B·T, Hq·D), k and v (B·T, Hkv·D).
final class CausalSelfAttention: LayerComponent {
    let spec: AttentionSpec
    let dModel: Int
    let residualStd: Double
    private var q = BoundParameter(), k = BoundParameter(), v = BoundParameter(), o = BoundParameter()
    /// q, k, v, attended, and what the kernel keeps for backward: the logsumexp (flash) or the
    /// probabilities (naive).
    private var cache = ActivationCache()
    private var naive: CausalAttention?
    private var flash: FlashAttention?
    /// The sequence-parallel attention when the pass's grid shards the sequence (flash kernel, ring or Ulysses).
    private var ring: RingAttention?, ulysses: UlyssesAttention?
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

    /// The grid's sequence group when it has more than one rank.
    private func sequenceGroup(_ context: PassContext) -> Communicator? {
        guard let grid = context.grid, grid.sequenceSize > 1 else { return nil }
        return grid.communicator(for: .sequence)
    }

    private func prepareSequenceParallel(_ c: PassContext, _ comm: Communicator) throws {
        let (B, T) = (c.batch, c.length)
        switch spec.sequenceMode {
        case .ring:
            if ring?.batch != B || ring?.length != T || ring?.comm !== comm || ring?.queryPositions != c.positions {
                ring = try RingAttention(batch: B, length: T, heads: spec.heads, kvHeads: spec.kvHeads, headDim: spec.headDim,
                                         positions: c.positions, comm: comm)
            }
        case .ulysses:
            if ulysses?.batch != B || ulysses?.length != T || ulysses?.comm !== comm || ulysses?.positions[comm.rank] != c.positions {
                ulysses = try UlyssesAttention(batch: B, length: T, heads: spec.heads, kvHeads: spec.kvHeads, headDim: spec.headDim,
                                               positions: c.positions, comm: comm)
            }
        }
    }

    private func prepare(_ context: PassContext) throws {
        let (B, T) = (context.batch, context.length)
        if let comm = sequenceGroup(context) {
            cache.ensure(rows: B * T, widths: [queryWidth, kvWidth, kvWidth, queryWidth, spec.heads])
            try prepareSequenceParallel(context, comm)
            if rope?.positions != context.positions {
                let tables = RoPE.tables(positions: context.positions, headDim: spec.headDim, theta: spec.ropeTheta)
                rope = (context.positions, tables.cos, tables.sin)
            }
            return
        }
        let saved = spec.kernel == .flash ? spec.heads : spec.heads * T
        cache.ensure(rows: B * T, widths: [queryWidth, kvWidth, kvWidth, queryWidth, saved])
        if spec.kernel == .flash {
            if flash?.batch != B || flash?.queryLength != T || flash?.queryPositions != context.positions {
                flash = FlashAttention(batch: B, queryLength: T, keyLength: T, heads: spec.heads, kvHeads: spec.kvHeads,
                                       headDim: spec.headDim, causal: true,
                                       queryPositions: context.positions, keyPositions: context.positions)
            }
        } else {
            _ = naiveKernel(batch: B, length: T)
        }
        if rope?.positions != context.positions {
            let tables = RoPE.tables(positions: context.positions, headDim: spec.headDim, theta: spec.ropeTheta)
            rope = (context.positions, tables.cos, tables.sin)
        }
    }

    private func naiveKernel(batch: Int, length: Int) -> CausalAttention {
        if naive?.batch != batch || naive?.length != length {
            naive = CausalAttention(batch: batch, length: length, heads: spec.heads, kvHeads: spec.kvHeads, headDim: spec.headDim)
        }
        return naive!
    }

    func forward(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) throws {
        try prepare(c)
        let (n, d, threads) = (c.rows, dModel, c.threads)
        let (qs, ks, vs, attended, saved) = (cache[0], cache[1], cache[2], cache[3], cache[4])
        input = x
        Matmul.linearForward(x: x, weight: q.value, y: qs, rows: n, inFeatures: d, outFeatures: queryWidth, threads: threads, precision: c.precision)
        Matmul.linearForward(x: x, weight: k.value, y: ks, rows: n, inFeatures: d, outFeatures: kvWidth, threads: threads, precision: c.precision)
        Matmul.linearForward(x: x, weight: v.value, y: vs, rows: n, inFeatures: d, outFeatures: kvWidth, threads: threads, precision: c.precision)
        rotate(qs, heads: spec.heads, context: c, inverse: false)
        rotate(ks, heads: spec.kvHeads, context: c, inverse: false)
        if sequenceGroup(c) != nil {
            // Sequence-parallel: no capture hook (a rank does not hold whole rows of probabilities).
            switch spec.sequenceMode {
            case .ring: try ring!.forward(q: qs, k: ks, v: vs, o: attended, logsumexp: saved, threads: threads, precision: c.precision)
            case .ulysses: try ulysses!.forward(q: qs, k: ks, v: vs, o: attended, threads: threads, precision: c.precision)
            }
        } else {
        switch spec.kernel {
        case .flash:
            flash!.forward(q: qs, k: ks, v: vs, o: attended, logsumexp: saved, threads: threads, precision: c.precision)
            if let capture = c.capture {
                // The flash kernel never forms the probabilities: the materialised kernel computes
                // them from the same q, k, v for the hook alone (its output is discarded).
                let naive = naiveKernel(batch: c.batch, length: c.length)
                let probabilities = c.scratch.buffer("attention.capture.probabilities", count: naive.probabilityCount)
                probabilities.update(repeating: 0, count: naive.probabilityCount)   // the hook sees 0 above the diagonal
                let discarded = c.scratch.buffer("attention.capture.output", count: n * queryWidth)
                naive.forward(q: qs, k: ks, v: vs, o: discarded, probabilities: probabilities, threads: threads)
                capture(layer, .attentionProbabilities, UnsafeBufferPointer(start: probabilities, count: naive.probabilityCount),
                        [c.batch, spec.heads, c.length, c.length])
            }
        case .naive:
            let naive = naive!
            naive.forward(q: qs, k: ks, v: vs, o: attended, probabilities: saved, threads: threads)
            if let capture = c.capture {
                capture(layer, .attentionProbabilities, UnsafeBufferPointer(start: saved, count: naive.probabilityCount),
                        [c.batch, spec.heads, c.length, c.length])
            }
        }
        }
        // out += attended · Woᵀ
        Matmul.gemm(transposeA: false, transposeB: true, m: n, n: d, k: queryWidth, a: attended, lda: queryWidth,
                    b: o.value, ldb: queryWidth, beta: 1, c: out, ldc: d, threads: threads, precision: c.precision)
    }

    func backward(_ dOut: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) throws {
        let sequenceParallel = sequenceGroup(c) != nil
        guard let x = input, sequenceParallel ? (ring != nil || ulysses != nil) : spec.kernel == .flash ? flash != nil : naive != nil else {
            preconditionFailure("CausalSelfAttention.backward before forward")
        }
        let (n, d, threads) = (c.rows, dModel, c.threads)
        let (qs, ks, vs, attended, saved) = (cache[0], cache[1], cache[2], cache[3], cache[4])
        let dAttended = c.scratch.buffer("attention.dAttended", count: n * queryWidth)
        let dq = c.scratch.buffer("attention.dq", count: n * queryWidth)
        let dk = c.scratch.buffer("attention.dk", count: n * kvWidth)
        let dv = c.scratch.buffer("attention.dv", count: n * kvWidth)
        Matmul.linearBackward(x: attended, weight: o.value, dy: dOut, dx: dAttended, dWeight: o.gradient,
                              rows: n, inFeatures: queryWidth, outFeatures: d, threads: threads, precision: c.precision)
        if sequenceParallel {
            switch spec.sequenceMode {
            case .ring: try ring!.backward(q: qs, k: ks, v: vs, o: attended, logsumexp: saved, dO: dAttended, dq: dq, dk: dk, dv: dv, threads: threads,
                                         precision: c.precision)
            case .ulysses: try ulysses!.backward(dO: dAttended, dq: dq, dk: dk, dv: dv, threads: threads, precision: c.precision)
            }
        } else {
        switch spec.kernel {
        case .flash:
            flash!.backward(q: qs, k: ks, v: vs, o: attended, logsumexp: saved, dO: dAttended,
                            dq: dq, dk: dk, dv: dv, threads: threads, precision: c.precision)
        case .naive:
            naive!.backward(q: qs, k: ks, v: vs, o: attended, probabilities: saved, dO: dAttended,
                            dq: dq, dk: dk, dv: dv, threads: threads)
        }
        }
        rotate(dq, heads: spec.heads, context: c, inverse: true)
        rotate(dk, heads: spec.kvHeads, context: c, inverse: true)
        Matmul.linearBackward(x: x, weight: q.value, dy: dq, dx: dx, dWeight: q.gradient,
                              rows: n, inFeatures: d, outFeatures: queryWidth, threads: threads, precision: c.precision)
        Matmul.linearBackward(x: x, weight: k.value, dy: dk, dx: dx, dWeight: k.gradient,
                              rows: n, inFeatures: d, outFeatures: kvWidth, accumulateInput: true, threads: threads, precision: c.precision)
        Matmul.linearBackward(x: x, weight: v.value, dy: dv, dx: dx, dWeight: v.gradient,
                              rows: n, inFeatures: d, outFeatures: kvWidth, accumulateInput: true, threads: threads, precision: c.precision)
    }

    private func rotate(_ x: UnsafeMutablePointer<Float>, heads: Int, context c: PassContext, inverse: Bool) {
        RoPE.apply(x, batch: c.batch, length: c.length, heads: heads, headDim: spec.headDim, cos: rope!.cos, sin: rope!.sin,
                   inverse: inverse, threads: c.threads)
    }

    var matmulFlopsPerToken: Double { 2.0 * Double(dModel) * Double(2 * queryWidth + 2 * kvWidth) }

    /// Scores and values, causal (half of T×T on average).
    func sequenceFlopsPerToken(length: Int) -> Double { 2.0 * 2 * Double(spec.heads * spec.headDim) * Double(length) / 2 }
}

extension SequenceMixerKind {
    /// Llama attention: runs on a sharded sequence (ring or Ulysses), loads in `transformers`.
    public static let attention = SequenceMixerKind(name: "attention", coreName: "llama_attention", shardsSequence: true) { $0.attention }
}

extension AttentionSpec: SequenceMixerSettings {
    public var kind: SequenceMixerKind { .attention }

    public func makeComponent(dModel: Int, residualStd: Double) -> LayerComponent {
        CausalSelfAttention(spec: self, dModel: dModel, residualStd: residualStd)
    }

    public func problems(dModel: Int, at: String) -> [String] {
        var out: [String] = []
        if heads < 1 { out.append("model.heads = \(heads) must be at least 1\(at)") }
        if kvHeads < 1 { out.append("model.kv_heads = \(kvHeads) must be at least 1\(at)") }
        if heads > 0, dModel % heads != 0 { out.append("model.d_model = \(dModel) is not divisible by model.heads = \(heads)\(at)") }
        if kvHeads > 0, heads % kvHeads != 0 { out.append("model.heads = \(heads) is not divisible by model.kv_heads = \(kvHeads)\(at)") }
        if heads > 0, dModel % heads == 0, headDim % 2 != 0 { out.append("head dimension d_model / heads = \(headDim) must be even for RoPE\(at)") }
        return out
    }

    public func phiMambaCoreInput(model: ModelConfig) -> [String: Any] {
        ["num_attention_heads": heads, "num_key_value_heads": kvHeads, "head_dim": headDim, "rope_theta": Double(ropeTheta),
         "attention_bias": false, "hidden_size": model.dModel, "max_position_embeddings": model.maxSequenceLength]
    }
}
