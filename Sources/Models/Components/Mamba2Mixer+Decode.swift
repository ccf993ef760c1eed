import Kernels
import TensorCore

/// The Mamba-2 mixer at inference: the prompt through the chunked scan, then one token at a
/// time through the recurrent step (`SSDScan.step`, `DepthwiseCausalConv.step`). The state is
/// the convolution's last W − 1 inputs and the scan's state per head (N × P): its size does
/// not depend on the context length, and every rank of a session holds all of it (nothing is
/// exchanged).
extension Mamba2Mixer: IncrementalSequenceMixer {
    public func makeIncrementalState(parameters: ParameterSet, prefix: String, plan: KVShardPlan) -> IncrementalMixerState {
        Mamba2DecodeState(shape: shape, values: Mamba2Values(parameters, prefix: prefix))
    }
}

/// One Mamba-2 layer's recurrent state.
final class Mamba2DecodeState: IncrementalMixerState {
    let shape: Mamba2Shape
    let values: Mamba2Values
    /// (HP + 2HN, W − 1): each channel's previous inputs, oldest first.
    let window: FloatBuffer
    /// (H, N, P).
    let states: FloatBuffer

    init(shape: Mamba2Shape, values: Mamba2Values) {
        self.shape = shape
        self.values = values
        window = FloatBuffer(count: shape.convChannels * (shape.spec.convWidth - 1))
        states = FloatBuffer(count: shape.spec.heads * shape.spec.stateSize * shape.spec.headDim)
    }

    /// A recurrent state holds no positions.
    var cachedPositions: Int { 0 }
    var cacheBytes: Int { (window.count + states.count) * MemoryLayout<Float>.size }
    var usedBytes: Int { cacheBytes }

    func prefill(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, count: Int, context c: DecodeContext) throws {
        precondition(c.position == 0, "Mamba2DecodeState.prefill: the state already holds positions")
        let s = shape
        let scan = s.scan(batch: 1, length: count)
        let buffers = Mamba2Buffers(projected: c.scratch.buffer("mamba.decode.projected", count: count * s.projectionWidth),
                                    convolved: c.scratch.buffer("mamba.decode.convolved", count: count * s.convChannels),
                                    gatePre: c.scratch.buffer("mamba.decode.gatePre", count: count * s.inner),
                                    y: c.scratch.buffer("mamba.decode.y", count: count * s.inner),
                                    gated: c.scratch.buffer("mamba.decode.gated", count: count * s.inner))
        s.forward(x, addingTo: out, values: values, scan: scan, buffers: buffers, chunkStates: nil, finalStates: states.pointer,
                  threads: c.threads)
        // The window: the last W − 1 unconvolved inputs of x, B, C (zeros before position 0).
        let kept = s.spec.convWidth - 1
        for channel in 0..<s.convChannels {
            for k in 0..<kept {
                let t = count - kept + k
                window[channel * kept + k] = t >= 0 ? buffers.projected[t * s.projectionWidth + channel] : 0
            }
        }
    }

    /// The state's size does not depend on `positions`: random values in [-0.1, 0.1).
    func fillSynthetic(positions: Int, extra: Int, rng: inout RNG) {
        for buffer in [window, states] {
            for i in 0..<buffer.count { buffer[i] = Float(rng.nextUniform() * 0.2 - 0.1) }
        }
    }

    func decode(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, context c: DecodeContext) throws {
        let s = shape
        let projected = c.scratch.buffer("mamba.decode.projected", count: s.projectionWidth)
        let convolved = c.scratch.buffer("mamba.decode.convolved", count: s.convChannels)
        let y = c.scratch.buffer("mamba.decode.y", count: s.inner)
        let gatePre = c.scratch.buffer("mamba.decode.gatePre", count: s.inner)
        let gated = c.scratch.buffer("mamba.decode.gated", count: s.inner)
        Matmul.linearForward(x: x, weight: values.inProj, y: projected, rows: 1, inFeatures: s.dModel, outFeatures: s.projectionWidth,
                             threads: c.threads)
        DepthwiseCausalConv.step(x: projected, window: window.pointer, weight: values.convWeight, bias: values.convBias,
                                 y: convolved, channels: s.convChannels, width: s.spec.convWidth)
        SSDScan.step(x: s.x(convolved), b: s.b(convolved), c: s.c(convolved), aLog: s.aLog(projected), d: values.skip,
                     states: states.pointer, y: y, batch: 1, heads: s.spec.heads, headDim: s.spec.headDim, stateSize: s.spec.stateSize)
        s.gateAndProject(rows: 1, projected: projected, y: y, gatePre: gatePre, gated: gated, values: values, addingTo: out,
                         threads: c.threads)
    }
}
