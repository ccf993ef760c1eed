import Kernels
import Models
import TensorCore

/// A Float64 Llama decoder assembled only from the naive `Reference` kernel twins: the
/// independent definition the Float32 `TransformerLM` is checked against, value by value
/// (logits) and tensor by tensor (gradients, by finite differences of `loss`).
///
/// A layer whose tensors hold `block_sparse_moe.gate.weight` is a mixture of experts
/// (`ReferenceMoE`, Mixtral names; experts and widths from the shapes, top-k, capacity and
/// coefficients from the `MoESpec` given), and `loss` then adds each such layer's
/// aux · balance + z · zLoss to the mean cross-entropy.
///
/// It is built from a `StateDict` with Hugging Face Llama names plus the scalars a state dict
/// does not carry (heads, kv heads, RoPE theta, norm eps, tied embeddings). Every size is read
/// from the tensors' shapes: vocabulary and width from `model.embed_tokens.weight`, the number
/// of layers from the `model.layers.L.` prefixes, and each layer's head dimension and FFN width
/// from its own projections, so layers may differ in FFN width.
///
/// Definition (Hugging Face `LlamaForCausalLM`, no biases):
/// x = embed[tokens]; per layer: x += o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))
/// with n = rmsnorm(x; input_layernorm), then x += down_proj(silu(gate_proj(m)) ⊙ up_proj(m))
/// with m = rmsnorm(x; post_attention_layernorm); logits = lm_head(rmsnorm(x; model.norm)), with
/// lm_head = embed_tokens when tied. RoPE is rotate-half at positions 0..<T; attention is causal
/// with query head h reading kv head h / (heads / kvHeads) (HF `repeat_kv`).
struct ReferenceDecoder {
    /// One block: its name prefix (`model.layers.L.`), head dimension and FFN width.
    struct Layer {
        let prefix: String
        let headDim: Int, ffnHidden: Int
        /// The mixture of experts of this layer (nil: the dense SwiGLU `mlp`).
        var moe: ReferenceMoE? = nil
    }

    enum Problem: Error, CustomStringConvertible, Equatable {
        case missing(String)
        case unexpected(String)
        case badShape(String, [Int], expected: String)
        case badScalars(String)

        var description: String {
            switch self {
            case let .missing(name): return "reference decoder: tensor \(name) is missing"
            case let .unexpected(name): return "reference decoder: tensor \(name) is not part of the model"
            case let .badShape(name, shape, expected): return "reference decoder: tensor \(name) has shape \(shape), expected \(expected)"
            case let .badScalars(text): return "reference decoder: \(text)"
            }
        }
    }

    let vocabSize: Int, dModel: Int
    let heads: Int, kvHeads: Int
    let ropeTheta: Double, normEps: Double
    let tieEmbeddings: Bool
    /// Top-k, capacity and loss coefficients of the MoE layers (experts and widths come from shapes).
    let moeSpec: MoESpec?
    let layers: [Layer]
    /// Parameter names in state-dict order, and their shapes.
    let names: [String]
    let shapes: [String: [Int]]
    /// The parameters in Float64, by name. Tests perturb these for finite differences.
    var weights: [String: [Double]]

    init(_ dict: StateDict, heads: Int, kvHeads: Int, ropeTheta: Double, normEps: Double, tieEmbeddings: Bool,
         moe: MoESpec? = nil) throws {
        guard heads >= 1, kvHeads >= 1, heads % kvHeads == 0 else {
            throw Problem.badScalars("\(heads) heads do not split into \(kvHeads) kv heads")
        }
        self.heads = heads; self.kvHeads = kvHeads; self.ropeTheta = ropeTheta; self.normEps = normEps
        self.tieEmbeddings = tieEmbeddings
        moeSpec = moe
        var shapes: [String: [Int]] = [:], weights: [String: [Double]] = [:]
        for (name, tensor) in dict.entries {
            shapes[name] = tensor.shape
            weights[name] = tensor.scalars.map(Double.init)
        }
        self.names = dict.names; self.shapes = shapes; self.weights = weights

        func shape(_ name: String) throws -> [Int] {
            guard let s = shapes[name] else { throw Problem.missing(name) }
            return s
        }
        func expect(_ name: String, _ expected: [Int]) throws {
            let s = try shape(name)
            guard s == expected else { throw Problem.badShape(name, s, expected: "\(expected)") }
        }

        let embed = try shape("model.embed_tokens.weight")
        guard embed.count == 2 else { throw Problem.badShape("model.embed_tokens.weight", embed, expected: "[vocab, d_model]") }
        let (V, d) = (embed[0], embed[1])
        vocabSize = V; dModel = d

        // Layers 0..<L, L from the highest index present; a gap shows up as a missing tensor.
        var count = 0
        for name in dict.names where name.hasPrefix("model.layers.") {
            let index = name.dropFirst("model.layers.".count).prefix { $0.isNumber }
            if let l = Int(index) { count = max(count, l + 1) }
        }
        var layers: [Layer] = []
        for l in 0..<count {
            let p = "model.layers.\(l)."
            try expect(p + "input_layernorm.weight", [d])
            let q = try shape(p + "self_attn.q_proj.weight")
            guard q.count == 2, q[1] == d, q[0] % heads == 0, (q[0] / heads) % 2 == 0 else {
                throw Problem.badShape(p + "self_attn.q_proj.weight", q, expected: "[heads · head_dim (even), \(d)] with \(heads) heads")
            }
            let headDim = q[0] / heads
            try expect(p + "self_attn.k_proj.weight", [kvHeads * headDim, d])
            try expect(p + "self_attn.v_proj.weight", [kvHeads * headDim, d])
            try expect(p + "self_attn.o_proj.weight", [d, heads * headDim])
            try expect(p + "post_attention_layernorm.weight", [d])
            if shapes[p + "block_sparse_moe.gate.weight"] != nil {
                guard let moe else { throw Problem.badScalars("layer \(l) is a mixture of experts and no MoESpec was given") }
                let router = try shape(p + "block_sparse_moe.gate.weight")
                guard router.count == 2, router[1] == d else { throw Problem.badShape(p + "block_sparse_moe.gate.weight", router, expected: "[experts, \(d)]") }
                let w1 = try shape(p + "block_sparse_moe.experts.0.w1.weight")
                guard w1.count == 2, w1[1] == d else { throw Problem.badShape(p + "block_sparse_moe.experts.0.w1.weight", w1, expected: "[hidden, \(d)]") }
                for e in 0..<router[0] {
                    try expect(p + "block_sparse_moe.experts.\(e).w1.weight", [w1[0], d])
                    try expect(p + "block_sparse_moe.experts.\(e).w3.weight", [w1[0], d])
                    try expect(p + "block_sparse_moe.experts.\(e).w2.weight", [d, w1[0]])
                }
                layers.append(Layer(prefix: p, headDim: headDim, ffnHidden: w1[0],
                                    moe: ReferenceMoE(experts: router[0], topK: moe.topK, hidden: w1[0], dModel: d,
                                                      capacityFactor: moe.capacityFactor)))
                continue
            }
            let gate = try shape(p + "mlp.gate_proj.weight")
            guard gate.count == 2, gate[1] == d else { throw Problem.badShape(p + "mlp.gate_proj.weight", gate, expected: "[ffn, \(d)]") }
            try expect(p + "mlp.up_proj.weight", [gate[0], d])
            try expect(p + "mlp.down_proj.weight", [d, gate[0]])
            layers.append(Layer(prefix: p, headDim: headDim, ffnHidden: gate[0]))
        }
        self.layers = layers
        try expect("model.norm.weight", [d])
        if !tieEmbeddings { try expect("lm_head.weight", [V, d]) }

        let perLayer = ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
        var known: Set<String> = ["model.embed_tokens.weight", "model.norm.weight"]
        if !tieEmbeddings { known.insert("lm_head.weight") }
        for layer in layers {
            for suffix in perLayer where layer.moe == nil || !suffix.hasPrefix("mlp.") { known.insert(layer.prefix + suffix) }
            guard let moe = layer.moe else { continue }
            known.insert(layer.prefix + "block_sparse_moe.gate.weight")
            for e in 0..<moe.experts {
                for w in ["w1", "w2", "w3"] { known.insert(layer.prefix + "block_sparse_moe.experts.\(e).\(w).weight") }
            }
        }
        if let extra = dict.names.first(where: { !known.contains($0) }) { throw Problem.unexpected(extra) }
    }

    /// The reference of a model: its current parameters and its config's scalars.
    init(model: TransformerLM) throws {
        let c = model.config
        guard let a = c.blocks.first?.sequenceMixer.attention else { throw Problem.badScalars("the first block has no attention") }
        try self.init(model.parameters.stateDict(), heads: a.heads, kvHeads: a.kvHeads, ropeTheta: Double(a.ropeTheta),
                      normEps: Double(c.normEps), tieEmbeddings: c.tieEmbeddings, moe: c.moe)
    }

    private func w(_ name: String) -> [Double] { weights[name]! }

    /// Logits (batch·length, vocab) for tokens (batch, length).
    func logits(tokens: [Int32], batch: Int, length: Int) -> [Double] { run(tokens: tokens, batch: batch, length: length).logits }

    /// Logits, and Σ over MoE layers of aux · balance + z · zLoss (with each layer's result).
    func run(tokens: [Int32], batch: Int, length: Int) -> (logits: [Double], auxiliary: Double, moe: [ReferenceMoE.Result]) {
        var auxiliary = 0.0, results: [ReferenceMoE.Result] = []
        precondition(tokens.count == batch * length, "reference: \(tokens.count) tokens for batch \(batch) × length \(length)")
        let n = batch * length, d = dModel
        let positions = Array(0..<length)
        var x = Reference.embedding(tokens.map(Int.init), table: w("model.embed_tokens.weight"), dim: d)
        for layer in layers {
            let p = layer.prefix, D = layer.headDim, f = layer.ffnHidden
            let qd = heads * D, kvd = kvHeads * D
            let h = Reference.rmsNorm(x, w(p + "input_layernorm.weight"), rows: n, dim: d, eps: normEps)
            let q = Reference.rope(Reference.linear(h, w(p + "self_attn.q_proj.weight"), rows: n, inFeatures: d, outFeatures: qd),
                                   batch: batch, length: length, heads: heads, headDim: D, positions: positions, theta: ropeTheta)
            let k = Reference.rope(Reference.linear(h, w(p + "self_attn.k_proj.weight"), rows: n, inFeatures: d, outFeatures: kvd),
                                   batch: batch, length: length, heads: kvHeads, headDim: D, positions: positions, theta: ropeTheta)
            let v = Reference.linear(h, w(p + "self_attn.v_proj.weight"), rows: n, inFeatures: d, outFeatures: kvd)
            let attended = Reference.attention(q: q, k: k, v: v, batch: batch, length: length, heads: heads, kvHeads: kvHeads, headDim: D)
            x = Self.add(x, Reference.linear(attended, w(p + "self_attn.o_proj.weight"), rows: n, inFeatures: qd, outFeatures: d))
            let m = Reference.rmsNorm(x, w(p + "post_attention_layernorm.weight"), rows: n, dim: d, eps: normEps)
            if let moe = layer.moe, let spec = moeSpec {
                let result = moe.forward(m, rows: n) { w(p + $0) }
                x = Self.add(x, result.out)
                auxiliary += spec.auxLossCoefficient * result.balance + spec.zLossCoefficient * result.zLoss
                results.append(result)
                continue
            }
            let gate = Reference.linear(m, w(p + "mlp.gate_proj.weight"), rows: n, inFeatures: d, outFeatures: f)
            let up = Reference.linear(m, w(p + "mlp.up_proj.weight"), rows: n, inFeatures: d, outFeatures: f)
            x = Self.add(x, Reference.linear(Reference.swiglu(gate: gate, up: up), w(p + "mlp.down_proj.weight"),
                                             rows: n, inFeatures: f, outFeatures: d))
        }
        let y = Reference.rmsNorm(x, w("model.norm.weight"), rows: n, dim: d, eps: normEps)
        let head = w(tieEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight")
        return (Reference.linear(y, head, rows: n, inFeatures: d, outFeatures: vocabSize), auxiliary, results)
    }

    /// Mean cross-entropy over all batch·length positions, plus the MoE layers' weighted
    /// auxiliary losses.
    func loss(tokens: [Int32], targets: [Int32], batch: Int, length: Int) -> Double {
        let (logits, auxiliary, _) = run(tokens: tokens, batch: batch, length: length)
        return Reference.crossEntropy(logits, targets: targets.map(Int.init), vocab: vocabSize) + auxiliary
    }

    /// The residual connection.
    private static func add(_ a: [Double], _ b: [Double]) -> [Double] { zip(a, b).map { $0 + $1 } }
}
