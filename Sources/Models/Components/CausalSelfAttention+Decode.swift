import Kernels
import TensorCore

/// Attention at inference: the prompt through the materialised kernel, then one token at a time
/// against a KV cache with `LeanAttention`, the cache sharded over ranks by the session's plan.
/// Kept apart from the training path (its own weights binding, buffers and cache).
extension CausalSelfAttention: IncrementalSequenceMixer {
    func makeIncrementalState(parameters: ParameterSet, prefix: String, plan: KVShardPlan) -> IncrementalMixerState {
        AttentionDecodeState(spec: spec, dModel: dModel, parameters: parameters, prefix: prefix, plan: plan)
    }
}

/// One attention layer's KV cache and what it needs to extend it.
final class AttentionDecodeState: IncrementalMixerState {
    let spec: AttentionSpec
    let dModel: Int
    let plan: KVShardPlan
    let cache: KVCache
    private let attention: ShardedDecodeAttention
    private let wq: UnsafePointer<Float>, wk: UnsafePointer<Float>, wv: UnsafePointer<Float>, wo: UnsafePointer<Float>

    init(spec: AttentionSpec, dModel: Int, parameters: ParameterSet, prefix: String, plan: KVShardPlan) {
        self.spec = spec
        self.dModel = dModel
        self.plan = plan
        cache = KVCache(kvHeads: spec.kvHeads, headDim: spec.headDim)
        attention = ShardedDecodeAttention(heads: spec.heads, kvHeads: spec.kvHeads, headDim: spec.headDim, plan: plan)
        wq = UnsafePointer(parameters.value(prefix + "self_attn.q_proj.weight"))
        wk = UnsafePointer(parameters.value(prefix + "self_attn.k_proj.weight"))
        wv = UnsafePointer(parameters.value(prefix + "self_attn.v_proj.weight"))
        wo = UnsafePointer(parameters.value(prefix + "self_attn.o_proj.weight"))
    }

    private var queryWidth: Int { spec.heads * spec.headDim }
    private var kvWidth: Int { spec.kvHeads * spec.headDim }
    var cachedPositions: Int { cache.length }
    var cacheBytes: Int { cache.bytes }
    var usedBytes: Int { 2 * cache.length * kvWidth * MemoryLayout<Float>.size }

    /// q, k, v (rows × width) of x, with RoPE at positions start..<start + rows applied to q and k.
    private func project(_ x: UnsafePointer<Float>, rows: Int, start: Int, context c: DecodeContext) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
        let q = c.scratch.buffer("decode.q", count: rows * queryWidth)
        let k = c.scratch.buffer("decode.k", count: rows * kvWidth)
        let v = c.scratch.buffer("decode.v", count: rows * kvWidth)
        Matmul.linearForward(x: x, weight: wq, y: q, rows: rows, inFeatures: dModel, outFeatures: queryWidth, threads: c.threads)
        Matmul.linearForward(x: x, weight: wk, y: k, rows: rows, inFeatures: dModel, outFeatures: kvWidth, threads: c.threads)
        Matmul.linearForward(x: x, weight: wv, y: v, rows: rows, inFeatures: dModel, outFeatures: kvWidth, threads: c.threads)
        let tables = RoPE.tables(positions: Array(start..<(start + rows)), headDim: spec.headDim, theta: spec.ropeTheta)
        tables.cos.withUnsafeBufferPointer { cos in
            tables.sin.withUnsafeBufferPointer { sin in
                RoPE.apply(q, batch: 1, length: rows, heads: spec.heads, headDim: spec.headDim, cos: cos.baseAddress!, sin: sin.baseAddress!,
                           threads: c.threads)
                RoPE.apply(k, batch: 1, length: rows, heads: spec.kvHeads, headDim: spec.headDim, cos: cos.baseAddress!, sin: sin.baseAddress!,
                           threads: c.threads)
            }
        }
        return (q, k, v)
    }

    func prefill(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, count: Int, context c: DecodeContext) throws {
        precondition(cache.length == 0 && c.position == 0, "AttentionDecodeState.prefill: the cache already holds positions")
        let (q, k, v) = project(x, rows: count, start: 0, context: c)
        // Flash attention: no P × P matrix, so a long prompt costs memory linear in its length.
        let kernel = FlashAttention(batch: 1, queryLength: count, keyLength: count, heads: spec.heads, kvHeads: spec.kvHeads,
                                    headDim: spec.headDim)
        let attended = c.scratch.buffer("decode.attended", count: count * queryWidth)
        let logsumexp = FloatBuffer(count: kernel.logsumexpCount)
        kernel.forward(q: q, k: k, v: v, o: attended, logsumexp: logsumexp.pointer, threads: c.threads)
        Matmul.gemm(transposeA: false, transposeB: true, m: count, n: dModel, k: queryWidth, a: attended, lda: queryWidth,
                    b: wo, ldb: queryWidth, beta: 1, c: out, ldc: dModel, threads: c.threads)
        cache.reserve(plan.localLength(of: plan.rank, length: count))
        for t in 0..<count where plan.owner(of: t) == plan.rank {
            cache.append(key: k + t * kvWidth, value: v + t * kvWidth)
        }
    }

    func fillSynthetic(positions: Int, extra: Int, rng: inout RNG) {
        precondition(cache.length == 0, "AttentionDecodeState.fillSynthetic: the cache already holds positions")
        let local = plan.localLength(of: plan.rank, length: positions)
        cache.reserve(local + extra)
        var key = [Float](repeating: 0, count: kvWidth), value = key
        for _ in 0..<local {
            for i in 0..<kvWidth { key[i] = Float(rng.nextUniform() * 2 - 1); value[i] = Float(rng.nextUniform() * 2 - 1) }
            cache.append(key: key, value: value)
        }
    }

    func decode(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, context c: DecodeContext) throws {
        let position = c.position
        let (q, k, v) = project(x, rows: 1, start: position, context: c)
        if plan.owner(of: position) == plan.rank { cache.append(key: k, value: v) }
        let attended = c.scratch.buffer("decode.attended", count: queryWidth)
        try attention.attend(q: q, cache: cache, length: position + 1, communicator: c.communicator, o: attended, threads: c.threads)
        Matmul.gemm(transposeA: false, transposeB: true, m: 1, n: dModel, k: queryWidth, a: attended, lda: queryWidth,
                    b: wo, ldb: queryWidth, beta: 1, c: out, ldc: dModel, threads: c.threads)
    }
}
