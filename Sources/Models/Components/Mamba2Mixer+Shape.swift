import Kernels
import TensorCore

/// Read-only pointers to one mixer's parameters.
struct Mamba2Values {
    let inProj: UnsafePointer<Float>, zBias: UnsafePointer<Float>, convWeight: UnsafePointer<Float>
    let convBias: UnsafePointer<Float>, skip: UnsafePointer<Float>, outProj: UnsafePointer<Float>

    init(inProj: UnsafeMutablePointer<Float>, zBias: UnsafeMutablePointer<Float>, convWeight: UnsafeMutablePointer<Float>,
         convBias: UnsafeMutablePointer<Float>, skip: UnsafeMutablePointer<Float>, outProj: UnsafeMutablePointer<Float>) {
        self.inProj = UnsafePointer(inProj); self.zBias = UnsafePointer(zBias); self.convWeight = UnsafePointer(convWeight)
        self.convBias = UnsafePointer(convBias); self.skip = UnsafePointer(skip); self.outProj = UnsafePointer(outProj)
    }

    /// The mixer's parameters in `parameters`, names carrying `prefix`.
    init(_ parameters: ParameterSet, prefix: String) {
        self.init(inProj: parameters.value(prefix + "mixer.in_proj.weight"), zBias: parameters.value(prefix + "mixer.z_bias"),
                  convWeight: parameters.value(prefix + "mixer.conv1d.weight"), convBias: parameters.value(prefix + "mixer.conv1d.bias"),
                  skip: parameters.value(prefix + "mixer.D"), outProj: parameters.value(prefix + "mixer.out_proj.weight"))
    }
}

/// The forward pass's activations (see `Mamba2Mixer`).
struct Mamba2Buffers {
    let projected: UnsafeMutablePointer<Float>, convolved: UnsafeMutablePointer<Float>
    let gatePre: UnsafeMutablePointer<Float>, y: UnsafeMutablePointer<Float>, gated: UnsafeMutablePointer<Float>
}

/// Widths and column offsets of one mixer, and the passes shared by training and inference.
struct Mamba2Shape {
    let spec: Mamba2Spec
    let dModel: Int

    /// H·P: x, z and y.
    var inner: Int { spec.heads * spec.headDim }
    /// H·N: B and C each.
    var stateWidth: Int { spec.heads * spec.stateSize }
    /// [x | B | C]: the convolution's channels.
    var convChannels: Int { inner + 2 * stateWidth }
    /// [x | B | C | z | A_log]: in_proj's outputs.
    var projectionWidth: Int { convChannels + inner + spec.heads }
    var zOffset: Int { convChannels }
    var aLogOffset: Int { convChannels + inner }

    func scan(batch: Int, length: Int) -> SSDScan {
        SSDScan(batch: batch, length: length, heads: spec.heads, headDim: spec.headDim, stateSize: spec.stateSize, chunkSize: spec.chunkSize)
    }

    func x(_ convolved: UnsafeMutablePointer<Float>) -> StridedRows { StridedRows(convolved, stride: convChannels) }
    func b(_ convolved: UnsafeMutablePointer<Float>) -> StridedRows { StridedRows(convolved + inner, stride: convChannels) }
    func c(_ convolved: UnsafeMutablePointer<Float>) -> StridedRows { StridedRows(convolved + inner + stateWidth, stride: convChannels) }
    func aLog(_ projected: UnsafeMutablePointer<Float>) -> StridedRows { StridedRows(projected + aLogOffset, stride: projectionWidth) }
    func dX(_ d: UnsafeMutablePointer<Float>) -> MutableStridedRows { MutableStridedRows(d, stride: convChannels) }
    func dB(_ d: UnsafeMutablePointer<Float>) -> MutableStridedRows { MutableStridedRows(d + inner, stride: convChannels) }
    func dC(_ d: UnsafeMutablePointer<Float>) -> MutableStridedRows { MutableStridedRows(d + inner + stateWidth, stride: convChannels) }
    func dALog(_ d: UnsafeMutablePointer<Float>) -> MutableStridedRows { MutableStridedRows(d + aLogOffset, stride: projectionWidth) }

    /// projected = u · in_projᵀ; convolved = conv1d(projected's [x | B | C] columns).
    func projectAndConvolve(_ u: UnsafePointer<Float>, values v: Mamba2Values, projected: UnsafeMutablePointer<Float>,
                            convolved: UnsafeMutablePointer<Float>, batch: Int, length: Int, threads: KernelThreads) {
        Matmul.linearForward(x: u, weight: v.inProj, y: projected, rows: batch * length, inFeatures: dModel,
                             outFeatures: projectionWidth, threads: threads)
        convolve(projected: projected, values: v, convolved: convolved, batch: batch, length: length, history: nil, threads: threads)
    }

    /// convolved = conv1d(projected's [x | B | C] columns), `history` (batch, W − 1, C) before each sample.
    func convolve(projected: UnsafePointer<Float>, values v: Mamba2Values, convolved: UnsafeMutablePointer<Float>, batch: Int,
                  length: Int, history: UnsafePointer<Float>?, threads: KernelThreads) {
        DepthwiseCausalConv.forward(x: StridedRows(projected, stride: projectionWidth), weight: v.convWeight, bias: v.convBias,
                                    y: MutableStridedRows(convolved, stride: convChannels), batch: batch, length: length,
                                    channels: convChannels, width: spec.convWidth, history: history, threads: threads)
    }

    /// out (B·T, d) += mixer(u (B·T, d)) through the chunked scan; fills `buffers`.
    func forward(_ u: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, values v: Mamba2Values, scan: SSDScan,
                 buffers: Mamba2Buffers, chunkStates: UnsafeMutablePointer<Float>?, finalStates: UnsafeMutablePointer<Float>?,
                 threads: KernelThreads) {
        let n = scan.batch * scan.length
        projectAndConvolve(u, values: v, projected: buffers.projected, convolved: buffers.convolved, batch: scan.batch,
                           length: scan.length, threads: threads)
        scan.forward(x: x(buffers.convolved), b: b(buffers.convolved), c: c(buffers.convolved), aLog: aLog(buffers.projected),
                     d: v.skip, y: buffers.y, chunkStates: chunkStates, finalStates: finalStates, threads: threads)
        gateAndProject(rows: n, projected: buffers.projected, y: buffers.y, gatePre: buffers.gatePre, gated: buffers.gated,
                       values: v, addingTo: out, threads: threads)
    }

    /// gatePre = z + z_bias; gated = y ⊙ silu(gatePre); out += gated · out_projᵀ.
    func gateAndProject(rows n: Int, projected: UnsafePointer<Float>, y: UnsafePointer<Float>, gatePre: UnsafeMutablePointer<Float>,
                        gated: UnsafeMutablePointer<Float>, values v: Mamba2Values, addingTo out: UnsafeMutablePointer<Float>,
                        threads: KernelThreads) {
        for r in 0..<n {
            let z = projected + r * projectionWidth + zOffset, g = gatePre + r * inner
            for i in 0..<inner { g[i] = z[i] + v.zBias[i] }
        }
        SwiGLU.forward(gate: gatePre, up: y, out: gated, count: n * inner, threads: threads)
        Matmul.gemm(transposeA: false, transposeB: true, m: n, n: dModel, k: inner, a: gated, lda: inner,
                    b: v.outProj, ldb: inner, beta: 1, c: out, ldc: dModel, threads: threads)
    }

    /// M (B, H, T, T) from a forward pass's projected and convolved activations.
    func mixingMatrix(scan: SSDScan, projected: UnsafeMutablePointer<Float>, convolved: UnsafeMutablePointer<Float>,
                      skip: UnsafePointer<Float>?, matrix: UnsafeMutablePointer<Float>, threads: KernelThreads) {
        scan.mixingMatrix(b: b(convolved), c: c(convolved), aLog: aLog(projected), d: skip, matrix: matrix, threads: threads)
    }

    /// into[i] += Σ_r rows[r, i], rows summed in order.
    static func sumRows(_ values: UnsafePointer<Float>, rows: Int, width: Int, into: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let row = values + r * width
            for i in 0..<width { into[i] += row[i] }
        }
    }
}
