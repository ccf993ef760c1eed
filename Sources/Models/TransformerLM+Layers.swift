import Kernels
import TensorCore

/// Entry points for training parts of the model on their own (distillation): one block on a
/// given residual input, and a whole pass whose loss on the logits the caller supplies.
extension TransformerLM {
    /// Runs block `layer` alone on the residual stream `input` (batch·length, d) — what the
    /// block would receive from the layer below — and returns its output (batch·length, d),
    /// the residual stream it hands on. Caches what `blockBackward(layer:outputGradient:)`
    /// needs; blocks keep their caches apart, so several layers can run forward before their
    /// backward calls, but any whole-model pass in between invalidates them.
    /// With `capture` set, the block reports its capture points as in a full pass.
    /// `positions`: the global position of each of the `length` tokens (default 0..<length;
    /// a sharded sequence's rows on a grid with a sequence axis).
    public func blockForward(layer: Int, input: [Float], batch: Int, length: Int, positions: [Int]? = nil) throws -> [Float] {
        let d = config.dModel
        precondition(blocks.indices.contains(layer), "blockForward: no layer \(layer)")
        precondition(input.count == batch * length * d, "blockForward: \(input.count) values for (\(batch)·\(length), \(d))")
        let s = passState(batch: batch, length: length, positions: positions)
        let c = s.context
        c.resetPass()
        c.capture = capture
        c.ready = nil
        input.withUnsafeBufferPointer { s.streams[layer].pointer.update(from: $0.baseAddress!, count: input.count) }
        try blocks[layer].forward(s.streams[layer].pointer, output: s.streams[layer + 1].pointer, context: c)
        return Array(UnsafeBufferPointer(start: s.streams[layer + 1].pointer, count: input.count))
    }

    /// Backward of the last `blockForward` of `layer`: from ∂L/∂output (batch·length, d), adds
    /// the block's parameter gradients (norms, mixers — all of them; a caller training only
    /// some steps only those) to `parameters.gradients` and returns ∂L/∂input. Auxiliary
    /// losses (mixture-of-experts balance and z-loss) add no gradient here: L is the caller's.
    @discardableResult
    public func blockBackward(layer: Int, outputGradient: [Float]) throws -> [Float] {
        guard let s = state else { preconditionFailure("blockBackward before blockForward") }
        let c = s.context, count = c.rows * config.dModel
        precondition(outputGradient.count == count, "blockBackward: \(outputGradient.count) values for (\(c.rows), \(config.dModel))")
        c.gradientScale = 0
        c.ready = nil
        outputGradient.withUnsafeBufferPointer { s.dResidual.pointer.update(from: $0.baseAddress!, count: count) }
        try blocks[layer].backward(s.dResidual.pointer, context: c)
        return Array(UnsafeBufferPointer(start: s.dResidual.pointer, count: count))
    }

    /// Forward and backward with a loss the caller computes from the logits: `loss` receives
    /// the logits (batch·length, V), must overwrite them in place with ∂L/∂logits and return
    /// L; the backward pass then adds ∂L/∂θ to `parameters.gradients`, and L is returned.
    /// Auxiliary losses (mixture-of-experts) add no gradient: L is the whole objective.
    @discardableResult
    public func lossAndGradients(tokens: [Int32], batch: Int, length: Int, positions: [Int]? = nil,
                                 loss: (_ logitsInGradientsOut: UnsafeMutablePointer<Float>) throws -> Double) throws -> Double {
        let s = try forward(tokens: tokens, batch: batch, length: length, positions: positions, backwardFollows: true)
        let total = try loss(s.logits.pointer)
        try backward(from: s, gradientScale: 0, ready: nil)
        return total
    }

    /// The attention probabilities (batch, H, length, length) of layer `layer`'s sequence mixer
    /// for its normalised input `input` (batch·length, d): whole sequences at positions
    /// 0..<length, computed on this rank alone whatever the grid (distillation's targets when
    /// the model's passes shard the sequence). Empty when the layer's mixer reports none (not
    /// attention). The layer's caches then belong to this call until its next pass.
    public func attentionProbabilities(layer: Int, input: [Float], batch: Int, length: Int) throws -> [Float] {
        precondition(input.count == batch * length * config.dModel, "attentionProbabilities: input must be (batch·length, d)")
        let context = PassContext(batch: batch, length: length, threads: threads)
        var probabilities: [Float] = []
        context.capture = { _, point, values, _ in if point == .attentionProbabilities { probabilities = Array(values) } }
        var discarded = [Float](repeating: 0, count: input.count)
        try input.withUnsafeBufferPointer { x in
            try discarded.withUnsafeMutableBufferPointer {
                try blocks[layer].sequenceMixer.forward(x.baseAddress!, addingTo: $0.baseAddress!, layer: layer, context: context)
            }
        }
        return probabilities
    }
}
