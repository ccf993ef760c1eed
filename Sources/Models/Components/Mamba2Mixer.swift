import Collectives
import Kernels
import TensorCore

/// Phi-Mamba's discrete Mamba-2 mixer (`modules/mixers/discrete_mamba2.py`) as a sequence mixer:
///
///     [x | B | C | z | A_log] = in_proj(u)                      (H·P, H·N, H·N, H·P, H)
///     [x | B | C] = conv1d([x | B | C])                         depthwise, causal, width W
///     y = SSM(x, B, C, a = sigmoid(−A_log)) + D ⊙ x             (`SSDScan`, chunked)
///     out = out_proj(y ⊙ silu(z + z_bias))
///
/// Parameters (relative to the block, Phi-Mamba's names under `mixer.`): `in_proj.weight`
/// (2HP + 2HN + H, d), `z_bias` (HP), `conv1d.weight` (HP + 2HN, 1, W), `conv1d.bias`,
/// `D` (H), `out_proj.weight` (d, HP). No projection biases (Phi-Mamba's `bias = False`).
///
/// Initialisation: projections as the model's other linear layers (`out_proj` with the
/// residual scale); the convolution is the identity (taps [0, …, 0, 1], bias 0); D = 1; and
/// z_bias = `unitGateBias`, so silu(z + z_bias) ≈ 1 while z is small: at initialisation the
/// gate passes y through unchanged (Phi-Mamba starts z_bias at 0 and zeroes every projection
/// before its first stage). A_log is an output of in_proj, ≈ 0 at first: a ≈ 1/2.
///
/// Activations (B·T rows): `projected` (B·T, 2HP + 2HN + H), `convolved` (B·T, HP + 2HN),
/// `gatePre` = z + z_bias, `y` and `gated` (B·T, HP), and the scan's chunk states.
/// With the sequence sharded (`parallel.sequence`), each sequence rank runs the mixer on its own
/// tokens (`SequencePieces`): the convolution takes the W − 1 inputs before each of its pieces
/// from their owners, and the scan runs each piece from a zero state and adds the state entering
/// it, combined from every piece's (decay, final state) pair (`SSDScan+State.swift`); backward
/// mirrors both exchanges. Exact up to the order of Float32 sums.
public final class Mamba2Mixer: LayerComponent {
    public let spec: Mamba2Spec
    public let dModel: Int
    let residualStd: Double
    let shape: Mamba2Shape
    private var inProj = BoundParameter(), zBias = BoundParameter(), convWeight = BoundParameter()
    private var convBias = BoundParameter(), skip = BoundParameter(), outProj = BoundParameter()
    private var cache = ActivationCache()
    private var chunkStates = FloatBuffer(count: 0)
    private var scan: SSDScan?
    private var input: UnsafePointer<Float>?
    /// What `mixingMatrix` keeps for `mixingMatrixBackward`: projected and convolved.
    private var matrixCache = ActivationCache()
    private var matrixInput: UnsafePointer<Float>?
    /// With the sequence sharded: its pieces, and the convolution's inputs before this rank's pieces.
    private var pieces: SequencePieces?
    private var halo = FloatBuffer(count: 0)

    /// The z_bias b with silu(b) = b · sigmoid(b) = 1, so the gate starts open at 1.
    public static let unitGateBias: Float = 1.2784645

    init(spec: Mamba2Spec, dModel: Int, residualStd: Double) {
        self.spec = spec
        self.dModel = dModel
        self.residualStd = residualStd
        shape = Mamba2Shape(spec: spec, dModel: dModel)
    }

    public var declarations: [ParameterDeclaration] {
        let (W, s) = (spec.convWidth, shape)
        return [ParameterDeclaration("mixer.in_proj.weight", [s.projectionWidth, dModel], .normal(std: 0.02)),
                ParameterDeclaration("mixer.z_bias", [s.inner], .repeating([Self.unitGateBias]), decays: false),
                ParameterDeclaration("mixer.conv1d.weight", [s.convChannels, 1, W],
                                     .repeating(Array(repeating: 0, count: W - 1) + [1])),
                ParameterDeclaration("mixer.conv1d.bias", [s.convChannels], .zeros),
                ParameterDeclaration("mixer.D", [spec.heads], .ones, decays: false),
                ParameterDeclaration("mixer.out_proj.weight", [dModel, s.inner], .normal(std: residualStd))]
    }

    public func bind(to parameters: ParameterSet, prefix: String) {
        inProj = BoundParameter(parameters, prefix + "mixer.in_proj.weight")
        zBias = BoundParameter(parameters, prefix + "mixer.z_bias")
        convWeight = BoundParameter(parameters, prefix + "mixer.conv1d.weight")
        convBias = BoundParameter(parameters, prefix + "mixer.conv1d.bias")
        skip = BoundParameter(parameters, prefix + "mixer.D")
        outProj = BoundParameter(parameters, prefix + "mixer.out_proj.weight")
    }

    var values: Mamba2Values {
        Mamba2Values(inProj: inProj.value, zBias: zBias.value, convWeight: convWeight.value, convBias: convBias.value,
                     skip: skip.value, outProj: outProj.value)
    }

    private func scanner(batch: Int, length: Int) -> SSDScan {
        if let scan, scan.batch == batch, scan.length == length { return scan }
        let fresh = shape.scan(batch: batch, length: length)
        scan = fresh
        return fresh
    }

    /// The pieces of the sharded sequence, when the grid shards it.
    private func sequencePieces(_ c: PassContext) throws -> SequencePieces? {
        guard let grid = c.grid, grid.sequenceSize > 1 else { return nil }
        let comm = grid.communicator(for: .sequence)
        if let pieces, pieces.batch == c.batch, pieces.comm === comm, pieces.positions == c.positions { return pieces }
        let fresh = try SequencePieces(batch: c.batch, positions: c.positions, comm: comm)
        pieces = fresh
        return fresh
    }

    /// out (B·T, d) += mixer(x). With the sequence sharded each rank runs on its own pieces
    /// only (`SequencePieces`): the convolution's halo and the scan's entering states come from
    /// the pieces before (no mixing-matrix capture: a rank holds its own rows only).
    public func forward(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) throws {
        let pieces = try sequencePieces(c)
        let scan = pieces.map { scanner(batch: $0.samples, length: $0.length) } ?? scanner(batch: c.batch, length: c.length)
        let (s, n, threads) = (shape, c.rows, c.threads)
        cache.ensure(rows: n, widths: [s.projectionWidth, s.convChannels, s.inner, s.inner, s.inner])
        if chunkStates.count != scan.chunkStateCount { chunkStates = FloatBuffer(count: scan.chunkStateCount) }
        input = x
        let buffers = Mamba2Buffers(projected: cache[0], convolved: cache[1], gatePre: cache[2], y: cache[3], gated: cache[4])
        guard let pieces else {
            s.forward(x, addingTo: out, values: values, scan: scan, buffers: buffers, chunkStates: chunkStates.pointer,
                      finalStates: nil, threads: threads)
            if let capture = c.capture {
                let count = c.batch * spec.heads * c.length * c.length
                let matrix = c.scratch.buffer("mamba.capture.matrix", count: count)
                s.mixingMatrix(scan: scan, projected: cache[0], convolved: cache[1], skip: skip.value, matrix: matrix, threads: threads)
                capture(layer, .mixingMatrix, UnsafeBufferPointer(start: matrix, count: count), [c.batch, spec.heads, c.length, c.length])
            }
            return
        }
        let (samples, states) = (pieces.samples, scan.finalStateCount)
        let haloCount = samples * (spec.convWidth - 1) * s.convChannels
        if halo.count != haloCount { halo = FloatBuffer(count: haloCount) }
        Matmul.linearForward(x: x, weight: inProj.value, y: buffers.projected, rows: n, inFeatures: dModel,
                             outFeatures: s.projectionWidth, threads: threads)
        try pieces.halo(StridedRows(buffers.projected, stride: s.projectionWidth), channels: s.convChannels, width: spec.convWidth,
                        into: halo.pointer)
        s.convolve(projected: buffers.projected, values: values, convolved: buffers.convolved, batch: samples, length: pieces.length,
                   history: halo.pointer, threads: threads)
        let finals = c.scratch.buffer("mamba.finalStates", count: states), incoming = c.scratch.buffer("mamba.incoming", count: states)
        let decays = c.scratch.buffer("mamba.logDecays", count: samples * spec.heads)
        let (xs, bs, cs, aLog) = (s.x(buffers.convolved), s.b(buffers.convolved), s.c(buffers.convolved), s.aLog(buffers.projected))
        scan.forward(x: xs, b: bs, c: cs, aLog: aLog, d: skip.value, y: buffers.y, chunkStates: chunkStates.pointer,
                     finalStates: finals, threads: threads)
        scan.totalLogDecay(aLog: aLog, into: decays)
        try pieces.incomingStates(finals: finals, logDecays: decays, heads: spec.heads, stateSize: spec.stateSize * spec.headDim,
                                  into: incoming)
        scan.addInitialStates(c: cs, aLog: aLog, initialStates: incoming, y: buffers.y, chunkStates: chunkStates.pointer, threads: threads)
        s.gateAndProject(rows: n, projected: buffers.projected, y: buffers.y, gatePre: buffers.gatePre, gated: buffers.gated,
                         values: values, addingTo: out, threads: threads)
    }

    /// Backward of `forward`: dx (B·T, d) overwritten, parameter gradients added. Sharded, the
    /// gradients of the entering states go back to the pieces before, and the halo's to its owners.
    public func backward(_ dOut: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) throws {
        let pieces = try sequencePieces(c)
        let (samples, length) = pieces.map { ($0.samples, $0.length) } ?? (c.batch, c.length)
        guard let x = input, let scan, scan.batch == samples, scan.length == length, cache.rows == c.rows else {
            preconditionFailure("Mamba2Mixer.backward before forward")
        }
        let (s, n, threads) = (shape, c.rows, c.threads)
        let (projected, convolved, gatePre, y, gated) = (cache[0], cache[1], cache[2], cache[3], cache[4])
        let dGated = c.scratch.buffer("mamba.dGated", count: n * s.inner)
        let dGatePre = c.scratch.buffer("mamba.dGatePre", count: n * s.inner)
        let dY = c.scratch.buffer("mamba.dY", count: n * s.inner)
        let dProjected = c.scratch.buffer("mamba.dProjected", count: n * s.projectionWidth)
        let dConvolved = c.scratch.buffer("mamba.dConvolved", count: n * s.convChannels)
        Matmul.linearBackward(x: gated, weight: outProj.value, dy: dOut, dx: dGated, dWeight: outProj.gradient,
                              rows: n, inFeatures: s.inner, outFeatures: dModel, threads: threads)
        SwiGLU.backward(gate: gatePre, up: y, dOut: dGated, dGate: dGatePre, dUp: dY, count: n * s.inner, threads: threads)
        for r in 0..<n {
            (dProjected + r * s.projectionWidth + s.zOffset).update(from: dGatePre + r * s.inner, count: s.inner)
        }
        Mamba2Shape.sumRows(dGatePre, rows: n, width: s.inner, into: zBias.gradient)
        let (xs, bs, cs, aLog) = (s.x(convolved), s.b(convolved), s.c(convolved), s.aLog(projected))
        let (dXs, dBs, dALog) = (s.dX(dConvolved), s.dB(dConvolved), s.dALog(dProjected))
        let dIncoming = pieces.map { _ in c.scratch.buffer("mamba.dIncoming", count: scan.finalStateCount) }
        scan.backward(x: xs, b: bs, c: cs, aLog: aLog, d: skip.value, chunkStates: chunkStates.pointer, dY: dY,
                      dx: dXs, dB: dBs, dC: s.dC(dConvolved), dALog: dALog, dD: skip.gradient, dInitialStates: dIncoming, threads: threads)
        let dHalo = pieces.map { _ in c.scratch.buffer("mamba.dHalo", count: halo.count) }
        if let pieces, let dIncoming {
            let dFinals = c.scratch.buffer("mamba.dFinalStates", count: scan.finalStateCount)
            try pieces.outgoingGradients(dIncoming: dIncoming, heads: spec.heads, stateSize: spec.stateSize * spec.headDim, into: dFinals)
            scan.addFinalStateGradient(x: xs, b: bs, aLog: aLog, chunkStates: chunkStates.pointer, dFinalStates: dFinals,
                                       dx: dXs, dB: dBs, dALog: dALog, threads: threads)
        }
        DepthwiseCausalConv.backward(x: StridedRows(projected, stride: s.projectionWidth), weight: convWeight.value,
                                     dy: StridedRows(dConvolved, stride: s.convChannels),
                                     dx: MutableStridedRows(dProjected, stride: s.projectionWidth),
                                     dWeight: convWeight.gradient, dBias: convBias.gradient, batch: samples, length: length,
                                     channels: s.convChannels, width: spec.convWidth, history: pieces.map { _ in halo.pointer },
                                     dHistory: dHalo, threads: threads)
        if let pieces, let dHalo {
            try pieces.returnHaloGradient(dHalo, channels: s.convChannels, width: spec.convWidth,
                                          addingTo: MutableStridedRows(dProjected, stride: s.projectionWidth))
        }
        Matmul.linearBackward(x: x, weight: inProj.value, dy: dProjected, dx: dx, dWeight: inProj.gradient,
                              rows: n, inFeatures: dModel, outFeatures: s.projectionWidth, threads: threads)
    }

    /// The mixing matrix M (B, H, T, T) of this mixer for its input `x` (B·T, d) — the
    /// normalised hidden states entering it: M[l, s] = (C_l · B_s) Π_{k=s+1..l} a_k for s ≤ l,
    /// plus D on the diagonal when `includeSkip` (as Phi-Mamba's `materialize_mixer`), so the
    /// mixer's y is M x per head. Row l, column s: the layout of attention probabilities.
    /// Keeps what `mixingMatrixBackward` needs (`x` must stay unchanged until then); the
    /// training caches of `forward` are not touched.
    public func mixingMatrix(_ x: UnsafePointer<Float>, matrix: UnsafeMutablePointer<Float>, includeSkip: Bool = true,
                             context c: PassContext) {
        let (s, scan) = (shape, shape.scan(batch: c.batch, length: c.length))
        matrixCache.ensure(rows: c.rows, widths: [s.projectionWidth, s.convChannels])
        matrixInput = x
        s.projectAndConvolve(x, values: values, projected: matrixCache[0], convolved: matrixCache[1], batch: c.batch,
                             length: c.length, threads: c.threads)
        s.mixingMatrix(scan: scan, projected: matrixCache[0], convolved: matrixCache[1], skip: includeSkip ? skip.value : nil,
                       matrix: matrix, threads: c.threads)
    }

    /// Gradients of `mixingMatrix` from dM (B, H, T, T) = ∂L/∂M: adds to the gradients of the
    /// parameters that shape M (in_proj's B, C and A_log rows, the convolution's B and C
    /// channels, and D when `includeSkip`); the other parameters' gradients are left as they
    /// are. `dx` (B·T, d), when given, is overwritten with ∂L/∂x.
    public func mixingMatrixBackward(_ dMatrix: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>?, includeSkip: Bool = true,
                                     context c: PassContext) {
        guard let x = matrixInput, matrixCache.rows == c.rows else { preconditionFailure("mixingMatrixBackward before mixingMatrix") }
        let (s, n, threads) = (shape, c.rows, c.threads)
        let scan = s.scan(batch: c.batch, length: c.length)
        let (projected, convolved) = (matrixCache[0], matrixCache[1])
        let dProjected = c.scratch.buffer("mamba.dProjected", count: n * s.projectionWidth)
        let dConvolved = c.scratch.buffer("mamba.dConvolved", count: n * s.convChannels)
        dProjected.update(repeating: 0, count: n * s.projectionWidth)
        dConvolved.update(repeating: 0, count: n * s.convChannels)
        scan.mixingMatrixBackward(b: s.b(convolved), c: s.c(convolved), aLog: s.aLog(projected), dMatrix: dMatrix,
                                  dB: s.dB(dConvolved), dC: s.dC(dConvolved), dALog: s.dALog(dProjected),
                                  dD: includeSkip ? skip.gradient : nil, threads: threads)
        // x's channels of the convolution get no gradient (M does not depend on them); only
        // the B and C channels' taps and biases change.
        let bcOffset = s.inner, bcChannels = 2 * s.stateWidth
        DepthwiseCausalConv.backward(x: StridedRows(projected + bcOffset, stride: s.projectionWidth),
                                     weight: convWeight.value + bcOffset * spec.convWidth,
                                     dy: StridedRows(dConvolved + bcOffset, stride: s.convChannels),
                                     dx: MutableStridedRows(dProjected + bcOffset, stride: s.projectionWidth),
                                     dWeight: convWeight.gradient + bcOffset * spec.convWidth, dBias: convBias.gradient + bcOffset,
                                     batch: c.batch, length: c.length, channels: bcChannels, width: spec.convWidth, threads: threads)
        let discard = c.scratch.buffer("mamba.dxDiscarded", count: n * dModel)
        Matmul.linearBackward(x: x, weight: inProj.value, dy: dProjected, dx: dx ?? discard, dWeight: inProj.gradient,
                              rows: n, inFeatures: dModel, outFeatures: s.projectionWidth, threads: threads)
    }

    public var matmulFlopsPerToken: Double { 2.0 * Double(dModel) * Double(shape.projectionWidth + shape.inner) }

    /// Per token: the intra-chunk products (C Bᵀ and its product with x, half of a chunk on
    /// average) and the state's update and read-out; linear in the length.
    public func sequenceFlopsPerToken(length: Int) -> Double {
        let (H, P, N) = (Double(spec.heads), Double(spec.headDim), Double(spec.stateSize))
        let chunk = Double(min(spec.chunkSize, max(length, 1)))
        return H * (2 * chunk / 2 * (N + P) + 2 * 2 * N * P)
    }
}

extension SequenceMixerKind {
    /// Phi-Mamba's discrete Mamba-2: runs on a sharded sequence by passing the scan state (`SequencePieces`).
    public static let mamba2 = SequenceMixerKind(name: "mamba2", coreName: "discrete_mamba2", shardsSequence: true) { keys in
        Mamba2Spec(heads: keys.attention.heads, headDim: keys.attention.headDim, chunkSize: keys.chunkSize)
    }
}

extension Mamba2Spec: SequenceMixerSettings {
    public var kind: SequenceMixerKind { .mamba2 }

    public func makeComponent(dModel: Int, residualStd: Double) -> LayerComponent {
        Mamba2Mixer(spec: self, dModel: dModel, residualStd: residualStd)
    }

    public func problems(dModel: Int, at: String) -> [String] { problems(at: at) }

    public func phiMambaCoreInput(model: ModelConfig) -> [String: Any] {
        let inner = heads * headDim
        var core: [String: Any] = [
            "d_state": stateSize, "n_v_heads": heads, "n_qk_heads": heads, "d_conv": convWidth, "conv_bias": true,
            "chunk_size": chunkSize, "activation": "identity", "bias": false, "d_inner": inner, "headdim": headDim]
        // Phi-Mamba derives d_inner = expand · d_model; say expand only when that holds.
        if model.dModel > 0, inner % model.dModel == 0 { core["expand"] = inner / model.dModel }
        return core
    }
}
