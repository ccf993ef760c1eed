import Kernels
import TensorCore

/// One decoder block, written once for every kind of mixer:
/// `middle = x + sequenceMixer(rmsnorm(x)); out = middle + channelMixer(rmsnorm(middle))`.
///
/// Parameters (Hugging Face Llama names under `model.layers.L.`): `input_layernorm.weight`,
/// the sequence mixer's, `post_attention_layernorm.weight`, the channel mixer's, in that
/// order, so a block's parameters are one contiguous range.
public final class DecoderBlock {
    public let layer: Int
    public let spec: BlockSpec
    let sequenceMixer: LayerComponent
    let channelMixer: LayerComponent
    let dModel: Int
    let eps: Float
    private var inputNorm = BoundParameter(), postNorm = BoundParameter()
    private var cache = ActivationCache()   // norm1, middle, norm2 (each (B·T, d)), rstd1, rstd2 (B·T)
    private var input: UnsafePointer<Float>?
    /// This block's parameters, for gradient readiness.
    private(set) var parameterRange: Range<Int> = 0..<0

    /// `residualStd`: initial scale of the projections that write into the residual stream.
    /// `sharding`: the experts this rank holds (mixture-of-experts layers).
    init(layer: Int, spec: BlockSpec, dModel: Int, eps: Float, residualStd: Double, sharding: ExpertSharding = .whole) {
        self.layer = layer
        self.spec = spec
        self.dModel = dModel
        self.eps = eps
        sequenceMixer = spec.sequenceMixer.settings.makeComponent(dModel: dModel, residualStd: residualStd)
        channelMixer = spec.channelMixer.settings.makeComponent(dModel: dModel, residualStd: residualStd, sharding: sharding)
    }

    var prefix: String { "model.layers.\(layer)." }

    /// The block's sequence mixer when it is a Mamba-2 mixer (its mixing matrix for distillation).
    public var mamba2Mixer: Mamba2Mixer? { sequenceMixer as? Mamba2Mixer }

    var declarations: [ParameterDeclaration] { declarations(global: false) }

    /// Every parameter of the block as one rank holding all of it would declare it.
    var globalDeclarations: [ParameterDeclaration] { declarations(global: true) }

    private func declarations(global: Bool) -> [ParameterDeclaration] {
        ([ParameterDeclaration("input_layernorm.weight", [dModel], .ones)]
            + (global ? sequenceMixer.globalDeclarations : sequenceMixer.declarations)
            + [ParameterDeclaration("post_attention_layernorm.weight", [dModel], .ones)]
            + (global ? channelMixer.globalDeclarations : channelMixer.declarations)).map { $0.prefixed(prefix) }
    }

    func bind(to parameters: ParameterSet) {
        inputNorm = BoundParameter(parameters, prefix + "input_layernorm.weight")
        postNorm = BoundParameter(parameters, prefix + "post_attention_layernorm.weight")
        sequenceMixer.bind(to: parameters, prefix: prefix)
        channelMixer.bind(to: parameters, prefix: prefix)
        let names = Set(declarations.map(\.name))
        let mine = parameters.entries.filter { names.contains($0.name) }
        parameterRange = mine.map(\.offset).min()!..<mine.map(\.range.upperBound).max()!
    }

    /// out (B·T, d) = block(x (B·T, d)); `x` must stay unchanged until `backward`.
    func forward(_ x: UnsafePointer<Float>, output out: UnsafeMutablePointer<Float>, context c: PassContext) throws {
        let (n, d) = (c.rows, dModel)
        cache.ensure(rows: n, widths: [d, d, d, 1, 1])
        let (norm1, middle, norm2, rstd1, rstd2) = (cache[0], cache[1], cache[2], cache[3], cache[4])
        input = x
        c.capture?(layer, .blockInput, UnsafeBufferPointer(start: x, count: n * d), [n, d])
        RMSNorm.forward(x: x, weight: inputNorm.value, y: norm1, rstd: rstd1, rows: n, dim: d, eps: eps, threads: c.threads)
        if let capture = c.capture {
            capture(layer, .sequenceMixerInput, UnsafeBufferPointer(start: norm1, count: n * d), [n, d])
            let mixed = c.scratch.buffer("block.capture", count: n * d)
            mixed.update(repeating: 0, count: n * d)
            try sequenceMixer.forward(norm1, addingTo: mixed, layer: layer, context: c)
            capture(layer, .sequenceMixerOutput, UnsafeBufferPointer(start: mixed, count: n * d), [n, d])
            for i in 0..<(n * d) { middle[i] = x[i] + mixed[i] }
        } else {
            middle.update(from: x, count: n * d)
            try sequenceMixer.forward(norm1, addingTo: middle, layer: layer, context: c)
        }
        RMSNorm.forward(x: middle, weight: postNorm.value, y: norm2, rstd: rstd2, rows: n, dim: d, eps: eps, threads: c.threads)
        out.update(from: middle, count: n * d)
        try channelMixer.forward(norm2, addingTo: out, layer: layer, context: c)
        c.capture?(layer, .blockOutput, UnsafeBufferPointer(start: out, count: n * d), [n, d])
    }

    /// dResidual (B·T, d): ∂L/∂out in, ∂L/∂x out (the residual path carries it through).
    func backward(_ dResidual: UnsafeMutablePointer<Float>, context c: PassContext) throws {
        guard let x = input else { preconditionFailure("DecoderBlock.backward before forward") }
        let (n, d) = (c.rows, dModel)
        let (middle, rstd1, rstd2) = (cache[1], cache[3], cache[4])
        let dNorm = c.scratch.buffer("block.dNorm", count: n * d)
        try channelMixer.backward(dResidual, dx: dNorm, layer: layer, context: c)
        RMSNorm.backward(x: middle, weight: postNorm.value, rstd: rstd2, dy: dNorm, dx: dResidual, dWeight: postNorm.gradient,
                         rows: n, dim: d, accumulate: true, threads: c.threads)
        try sequenceMixer.backward(dResidual, dx: dNorm, layer: layer, context: c)
        RMSNorm.backward(x: x, weight: inputNorm.value, rstd: rstd1, dy: dNorm, dx: dResidual, dWeight: inputNorm.gradient,
                         rows: n, dim: d, accumulate: true, threads: c.threads)
        c.ready?(parameterRange)
    }

    var matmulFlopsPerToken: Double { sequenceMixer.matmulFlopsPerToken + channelMixer.matmulFlopsPerToken }

    func sequenceFlopsPerToken(length: Int) -> Double {
        sequenceMixer.sequenceFlopsPerToken(length: length) + channelMixer.sequenceFlopsPerToken(length: length)
    }
}
