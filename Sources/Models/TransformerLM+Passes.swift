import Kernels
import TensorCore

/// Buffers of the model's own layers (embedding, residual streams, final norm, head) for one
/// (batch, length, positions). Sizes use N = batch × length tokens.
final class PassState {
    let context: PassContext
    let tokenIDs: UnsafeMutablePointer<Int32>
    let streams: [FloatBuffer]     // layers + 1 residual streams (N, d): block l reads l, writes l + 1
    let finalNorm: FloatBuffer     // (N, d)
    let finalRstd: FloatBuffer     // (N)
    let logits: FloatBuffer        // (N, V); holds dLogits after the loss
    let dResidual: FloatBuffer     // (N, d)

    init(context: PassContext, config: ModelConfig) {
        self.context = context
        let n = context.rows, d = config.dModel
        tokenIDs = .allocate(capacity: max(n, 1))
        streams = (0...config.layers).map { _ in FloatBuffer(count: n * d) }
        finalNorm = FloatBuffer(count: n * d)
        finalRstd = FloatBuffer(count: n)
        logits = FloatBuffer(count: n * config.vocabSize)
        dResidual = FloatBuffer(count: n * d)
    }

    deinit { tokenIDs.deallocate() }
}

extension TransformerLM {
    func passState(batch: Int, length: Int, positions: [Int]?) -> PassState {
        if let state, state.context.matches(batch: batch, length: length, positions: positions, threads: threads, grid: grid) {
            state.context.precision = precision
            state.context.localRouting = localRouting
            return state
        }
        let context = PassContext(batch: batch, length: length, positions: positions, threads: threads, grid: grid)
        context.precision = precision
        context.localRouting = localRouting
        let fresh = PassState(context: context, config: config)
        state = fresh
        return fresh
    }

    /// Runs the forward pass on tokens (batch, length) and leaves logits (batch·length, V) in
    /// the pass state. `backwardFollows`: the head's parameters stay acquired for the backward pass.
    @discardableResult
    func forward(tokens: [Int32], batch: Int, length: Int, positions: [Int]?, backwardFollows: Bool = false) throws -> PassState {
        precondition(tokens.count == batch * length, "forward: \(tokens.count) tokens for batch \(batch) × length \(length)")
        let s = passState(batch: batch, length: length, positions: positions)
        let c = s.context, n = c.rows, d = config.dModel
        c.resetPass()
        c.capture = capture
        c.ready = nil
        tokens.withUnsafeBufferPointer { s.tokenIDs.update(from: $0.baseAddress!, count: n) }
        let r = residency
        try r?.acquire(.embedding, next: blocks.isEmpty ? .head : .block(0))
        Embedding.forward(tokens: s.tokenIDs, count: n, table: embed.value, dim: d, out: s.streams[0].pointer)
        r?.release(.embedding)
        for (l, block) in blocks.enumerated() {
            try r?.acquire(.block(l), next: l + 1 < blocks.count ? .block(l + 1) : .head)
            try block.forward(s.streams[l].pointer, output: s.streams[l + 1].pointer, context: c)
            r?.release(.block(l))
        }
        try r?.acquire(.head, next: nil)
        let last = s.streams[blocks.count].pointer
        RMSNorm.forward(x: last, weight: finalNorm.value, y: s.finalNorm.pointer, rstd: s.finalRstd.pointer,
                        rows: n, dim: d, eps: config.normEps, threads: c.threads)
        Matmul.linearForward(x: s.finalNorm.pointer, weight: head.value, y: s.logits.pointer, rows: n, inFeatures: d,
                             outFeatures: config.vocabSize, threads: c.threads, precision: c.precision)
        if !backwardFollows { r?.release(.head) }
        return s
    }

    /// Σ over tokens of −log p(target): the forward pass only (evaluation).
    public func lossSum(tokens: [Int32], targets: [Int32], batch: Int, length: Int, positions: [Int]? = nil) throws -> Double {
        let s = try forward(tokens: tokens, batch: batch, length: length, positions: positions)
        return targets.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(logits: s.logits.pointer, targets: $0.baseAddress!, rows: batch * length,
                                                vocab: config.vocabSize, dLogits: nil, gradientScale: 0, threads: s.context.threads)
        }
    }

    /// Logits (batch·length, V) of the forward pass.
    public func logits(tokens: [Int32], batch: Int, length: Int, positions: [Int]? = nil) throws -> [Float] {
        try forward(tokens: tokens, batch: batch, length: length, positions: positions).logits.array
    }

    /// Forward and backward: adds ∂(gradientScale · Σ loss)/∂θ to `parameters.gradients` and
    /// returns Σ loss (Float64). `ready` is called with each parameter range whose gradient is
    /// final, in the order the backward pass finishes them (head first, embedding last), so a
    /// caller can start reducing gradients while the rest of the backward pass runs.
    /// `positions`: the global position of each of the `length` tokens (default 0..<length).
    @discardableResult
    public func lossAndGradients(tokens: [Int32], targets: [Int32], batch: Int, length: Int, positions: [Int]? = nil,
                                 gradientScale: Float, ready: ((Range<Int>) -> Void)? = nil) throws -> Double {
        let s = try forward(tokens: tokens, batch: batch, length: length, positions: positions, backwardFollows: true)
        let c = s.context, n = c.rows
        c.gradientScale = gradientScale
        let total = targets.withUnsafeBufferPointer {
            SoftmaxCrossEntropy.forwardBackward(logits: s.logits.pointer, targets: $0.baseAddress!, rows: n, vocab: config.vocabSize,
                                                dLogits: s.logits.pointer, gradientScale: gradientScale, threads: c.threads)
        }
        try backward(from: s, gradientScale: gradientScale, ready: ready)
        return total
    }

    /// The backward pass from ∂L/∂logits (left in `s.logits`) to every parameter gradient.
    func backward(from s: PassState, gradientScale: Float, ready: ((Range<Int>) -> Void)?) throws {
        let c = s.context, n = c.rows, d = config.dModel
        c.gradientScale = gradientScale
        c.ready = ready
        defer { c.ready = nil }
        // Head and final norm (their parameters still acquired from the forward pass).
        let r = residency
        try r?.acquire(.head, next: blocks.indices.last.map(ParameterUnit.block))
        let dNorm = c.scratch.buffer("block.dNorm", count: n * d)
        Matmul.linearBackward(x: s.finalNorm.pointer, weight: head.value, dy: s.logits.pointer, dx: dNorm,
                              dWeight: head.gradient, rows: n, inFeatures: d, outFeatures: config.vocabSize, threads: c.threads, precision: c.precision)
        if !config.tieEmbeddings { ready?(parameters.entry("lm_head.weight").range) }
        RMSNorm.backward(x: s.streams[blocks.count].pointer, weight: finalNorm.value, rstd: s.finalRstd.pointer,
                         dy: dNorm, dx: s.dResidual.pointer, dWeight: finalNorm.gradient, rows: n, dim: d,
                         threads: c.threads)
        ready?(parameters.entry("model.norm.weight").range)
        r?.release(.head)
        for (l, block) in blocks.enumerated().reversed() {
            try r?.acquire(.block(l), next: l > 0 ? .block(l - 1) : nil)
            try block.backward(s.dResidual.pointer, context: c)
            r?.release(.block(l))
        }
        Embedding.backward(tokens: s.tokenIDs, count: n, dOut: s.dResidual.pointer, dim: d, dTable: embed.gradient)
        ready?(parameters.entry("model.embed_tokens.weight").range)
    }
}
