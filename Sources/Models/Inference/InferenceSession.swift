import Collectives
import Kernels
import TensorCore

/// Generation with a KV cache: `prefill(tokens:)` runs a prompt (positions 0..<P) and fills
/// every attention layer's cache, `decode(token:)` runs one token at the next position against
/// the caches with `LeanAttention`; both return that last position's logits (V).
///
/// Memory is the caches, O(context); contexts longer than the training length work (RoPE
/// positions continue, there is no window). With a communicator of N ranks every layer's
/// cache is sharded over them (`KVShardPlan`: round-robin by block), each decode step
/// exchanges one set of partials per layer, and every rank gets bit for bit the logits one rank
/// gets. Every rank must make the same calls with the same tokens.
///
/// The session reads the model's weights in place; do not train the model while a session runs.
public final class InferenceSession {
    public let model: TransformerLM
    public let plan: KVShardPlan
    public let context: DecodeContext
    /// Positions run so far (the next token goes here).
    public private(set) var position = 0
    private let layers: [Layer]
    private let embed: UnsafePointer<Float>, finalNorm: UnsafePointer<Float>, head: UnsafePointer<Float>

    struct Layer {
        let index: Int
        let mixer: IncrementalMixerState
        let channel: RowwiseChannelMixer
        let prefix: String
        let inputNorm: UnsafePointer<Float>, postNorm: UnsafePointer<Float>
        let eps: Float
    }

    /// `communicator`: the ranks sharing the caches (nil: this process alone). `blockSize` and
    /// `lanes` shape the decode kernel's reduction tree and the sharding; the bits depend on
    /// them, never on the rank count. `threads` defaults to the model's.
    public init(model: TransformerLM, communicator: Communicator? = nil, blockSize: Int = LeanAttention.defaultBlockSize,
                lanes: Int = LeanAttention.defaultLanes, threads: KernelThreads? = nil) throws {
        self.model = model
        let plan = try KVShardPlan(blockSize: blockSize, lanes: lanes, rank: communicator?.rank ?? 0, ranks: communicator?.size ?? 1)
        self.plan = plan
        context = DecodeContext(threads: threads ?? model.threads, communicator: communicator, plan: plan)
        let parameters = model.parameters
        layers = try model.blocks.map { block in
            guard let sequence = block.sequenceMixer.incremental else {
                throw InferenceError.unsupportedLayer(layer: block.layer, kind: "sequence mixer \(block.spec.sequenceMixer.kind)")
            }
            guard let channel = block.channelMixer.rowwise else {
                throw InferenceError.unsupportedLayer(layer: block.layer, kind: "channel mixer \(block.spec.channelMixer.kind)")
            }
            return Layer(index: block.layer, mixer: sequence.makeIncrementalState(parameters: parameters, prefix: block.prefix, plan: plan),
                         channel: channel, prefix: block.prefix,
                         inputNorm: UnsafePointer(parameters.value(block.prefix + "input_layernorm.weight")),
                         postNorm: UnsafePointer(parameters.value(block.prefix + "post_attention_layernorm.weight")),
                         eps: block.eps)
        }
        embed = UnsafePointer(parameters.value("model.embed_tokens.weight"))
        finalNorm = UnsafePointer(parameters.value("model.norm.weight"))
        head = UnsafePointer(parameters.value(model.config.tieEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"))
    }

    /// Runs the prompt at positions 0..<P and returns the logits of its last position.
    /// The session must be empty (a new session per prompt).
    public func prefill(tokens: [Int32]) throws -> [Float] {
        guard !tokens.isEmpty else { throw InferenceError.emptyPrompt }
        guard position == 0 else { throw InferenceError.alreadyStarted(positions: position) }
        try checkVocabulary(tokens)
        context.position = 0
        let logits = try run(tokens, prefill: true)
        position = tokens.count
        return logits
    }

    /// Runs one token at the next position and returns its logits.
    public func decode(token: Int32) throws -> [Float] {
        try checkVocabulary([token])
        context.position = position
        let logits = try run([token], prefill: false)
        position += 1
        return logits
    }

    /// Benchmarks only: makes the session hold `positions` positions of seeded random keys,
    /// values and recurrent states (each rank its share, as a prompt would leave them), with
    /// room for `extra` more tokens, so `decode` can be timed at a long context without running
    /// the prompt. The logits that follow are meaningless. The session must be empty.
    public func fillSynthetic(positions: Int, extra: Int = 1024, seed: UInt64 = 1) throws {
        guard position == 0 else { throw InferenceError.alreadyStarted(positions: position) }
        guard positions >= 1 else { throw InferenceError.emptyPrompt }
        var rng = RNG(seed: seed, stream: UInt64(plan.rank))
        for layer in layers { layer.mixer.fillSynthetic(positions: positions, extra: extra, rng: &rng) }
        position = positions
    }

    /// Positions cached on this rank (per attention layer; recurrent layers hold none) and the
    /// bytes of all its caches and states.
    public var cachedPositions: Int { layers.map(\.mixer.cachedPositions).max() ?? 0 }
    public var cacheBytes: Int { layers.reduce(0) { $0 + $1.mixer.cacheBytes } }
    /// Bytes of what this rank's caches and states hold (allocated spare room left out).
    public var usedBytes: Int { layers.reduce(0) { $0 + $1.mixer.usedBytes } }

    private func checkVocabulary(_ tokens: [Int32]) throws {
        let vocab = model.config.vocabSize
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= vocab }) { throw InferenceError.tokenOutOfRange(token: bad, vocabSize: vocab) }
    }

    /// The decoder over `tokens` rows (the prompt, or one token): each block adds its mixers into
    /// the residual stream in place; the final norm and head run on the last row only.
    private func run(_ tokens: [Int32], prefill: Bool) throws -> [Float] {
        let rows = tokens.count, d = model.config.dModel, vocab = model.config.vocabSize
        let c = context, threads = c.threads
        let stream = c.scratch.buffer("session.stream", count: rows * d)
        let normed = c.scratch.buffer("session.normed", count: rows * d)
        let rstd = c.scratch.buffer("session.rstd", count: rows)
        tokens.withUnsafeBufferPointer { Embedding.forward(tokens: $0.baseAddress!, count: rows, table: embed, dim: d, out: stream) }
        for layer in layers {
            RMSNorm.forward(x: stream, weight: layer.inputNorm, y: normed, rstd: rstd, rows: rows, dim: d, eps: layer.eps, threads: threads)
            if prefill {
                try layer.mixer.prefill(normed, addingTo: stream, count: rows, context: c)
            } else {
                try layer.mixer.decode(normed, addingTo: stream, context: c)
            }
            RMSNorm.forward(x: stream, weight: layer.postNorm, y: normed, rstd: rstd, rows: rows, dim: d, eps: layer.eps, threads: threads)
            try layer.channel.forwardRows(normed, addingTo: stream, rows: rows, parameters: model.parameters, prefix: layer.prefix, context: c)
        }
        let last = stream + (rows - 1) * d
        RMSNorm.forward(x: last, weight: finalNorm, y: normed, rstd: rstd, rows: 1, dim: d, eps: model.config.normEps, threads: threads)
        var logits = [Float](repeating: 0, count: vocab)
        logits.withUnsafeMutableBufferPointer {
            Matmul.linearForward(x: normed, weight: head, y: $0.baseAddress!, rows: 1, inFeatures: d, outFeatures: vocab, threads: threads)
        }
        return logits
    }
}
