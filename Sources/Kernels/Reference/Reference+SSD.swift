import Foundation

/// Naive twins of `SSDScan`, `DepthwiseCausalConv` and the whole discrete Mamba-2 mixer, written
/// from the definitions (the mixing matrix entry by entry, the recurrence position by position),
/// in the scalar type T. Layouts are contiguous: x (B·T, H·P), B and C (B·T, H·N), A_log (B·T, H).
extension Reference {
    /// Sizes of one discrete Mamba-2 problem.
    public struct SSDShape: Sendable {
        public let batch: Int, length: Int, heads: Int, headDim: Int, stateSize: Int

        public init(batch: Int, length: Int, heads: Int, headDim: Int, stateSize: Int) {
            self.batch = batch; self.length = length; self.heads = heads; self.headDim = headDim; self.stateSize = stateSize
        }
    }

    /// a = exp(−softplus(z)) = sigmoid(−z).
    static func decay<T: BinaryFloatingPoint>(_ z: T) -> T { T(1 / (1 + Foundation.exp(Double(z)))) }

    /// M (B, H, T, T): M[l, s] = Σ_n C[l, n] B[s, n] · Π_{k=s+1..l} a_k for s ≤ l, plus D_h on the diagonal.
    public static func ssdMixingMatrix<T: BinaryFloatingPoint>(_ s: SSDShape, b: [T], c: [T], aLog: [T], d: [T]?) -> [T] {
        let (L, H, N) = (s.length, s.heads, s.stateSize)
        var m = [T](repeating: 0, count: s.batch * H * L * L)
        for sample in 0..<s.batch {
            for h in 0..<H {
                for l in 0..<L {
                    for j in 0...l {
                        var dot: T = 0
                        for n in 0..<N { dot += c[((sample * L + l) * H + h) * N + n] * b[((sample * L + j) * H + h) * N + n] }
                        var product: T = 1
                        for k in stride(from: j + 1, through: l, by: 1) { product *= decay(aLog[(sample * L + k) * H + h]) }
                        m[((sample * H + h) * L + l) * L + j] = dot * product + (l == j ? d?[h] ?? 0 : 0)
                    }
                }
            }
        }
        return m
    }

    /// y (B·T, H·P) by the recurrence S_t = a_t S_{t−1} + B_t x_tᵀ, y_t = S_tᵀ C_t + D_h x_t.
    /// With `initialStates` (B, H, N, P) the recurrence starts from them; returns y and the final states.
    public static func ssdRecurrent<T: BinaryFloatingPoint>(_ s: SSDShape, x: [T], b: [T], c: [T], aLog: [T], d: [T],
                                                            initialStates: [T]? = nil) -> (y: [T], states: [T]) {
        let (L, H, P, N) = (s.length, s.heads, s.headDim, s.stateSize)
        var y = [T](repeating: 0, count: s.batch * L * H * P)
        var states = initialStates ?? [T](repeating: 0, count: s.batch * H * N * P)
        for sample in 0..<s.batch {
            for h in 0..<H {
                let base = (sample * H + h) * N * P
                for t in 0..<L {
                    let row = sample * L + t, a = decay(aLog[row * H + h])
                    for n in 0..<N {
                        for p in 0..<P {
                            states[base + n * P + p] = a * states[base + n * P + p] + b[(row * H + h) * N + n] * x[(row * H + h) * P + p]
                        }
                    }
                    for p in 0..<P {
                        var out = d[h] * x[(row * H + h) * P + p]
                        for n in 0..<N { out += c[(row * H + h) * N + n] * states[base + n * P + p] }
                        y[(row * H + h) * P + p] = out
                    }
                }
            }
        }
        return (y, states)
    }

    /// y (B·T, C) = bias + Σ_k weight[c, k] x[t − (W − 1) + k] within each sample.
    public static func causalConv<T: BinaryFloatingPoint>(_ x: [T], weight: [T], bias: [T], batch: Int, length: Int,
                                                          channels: Int, width: Int) -> [T] {
        var y = [T](repeating: 0, count: batch * length * channels)
        for sample in 0..<batch {
            for t in 0..<length {
                for ch in 0..<channels {
                    var sum = bias[ch]
                    for k in 0..<width where t - (width - 1) + k >= 0 {
                        sum += weight[ch * width + k] * x[(sample * length + t - (width - 1) + k) * channels + ch]
                    }
                    y[(sample * length + t) * channels + ch] = sum
                }
            }
        }
        return y
    }

    /// Parameters of one discrete Mamba-2 mixer in Phi-Mamba's layouts: in_proj (2HP + 2HN + H, d)
    /// whose outputs are [x | B | C | z | A_log], z_bias (HP), conv weight (HP + 2HN, W) and bias,
    /// D (H), out_proj (d, HP).
    public struct Mamba2Weights<T: BinaryFloatingPoint> {
        public var inProj: [T], zBias: [T], convWeight: [T], convBias: [T], d: [T], outProj: [T]

        public init(inProj: [T], zBias: [T], convWeight: [T], convBias: [T], d: [T], outProj: [T]) {
            self.inProj = inProj; self.zBias = zBias; self.convWeight = convWeight; self.convBias = convBias
            self.d = d; self.outProj = outProj
        }
    }

    /// out (B·T, dModel) = out_proj(y ⊙ silu(z + z_bias)), y = SSM(conv(x, B, C)) + D x, for input u (B·T, dModel).
    public static func mamba2Mixer<T: BinaryFloatingPoint>(_ s: SSDShape, dModel: Int, convWidth: Int, input u: [T],
                                                           weights w: Mamba2Weights<T>) -> [T] {
        let (H, P, N) = (s.heads, s.headDim, s.stateSize)
        let rows = s.batch * s.length, inner = H * P, convDim = inner + 2 * H * N, total = 2 * inner + 2 * H * N + H
        let projected = linear(u, w.inProj, rows: rows, inFeatures: dModel, outFeatures: total)
        var xBC = [T](), z = [T](), aLog = [T]()
        for r in 0..<rows {
            xBC += projected[(r * total)..<(r * total + convDim)]
            z += projected[(r * total + convDim)..<(r * total + convDim + inner)]
            aLog += projected[(r * total + convDim + inner)..<((r + 1) * total)]
        }
        let convolved = causalConv(xBC, weight: w.convWeight, bias: w.convBias, batch: s.batch, length: s.length,
                                   channels: convDim, width: convWidth)
        var x = [T](), b = [T](), c = [T]()
        for r in 0..<rows {
            x += convolved[(r * convDim)..<(r * convDim + inner)]
            b += convolved[(r * convDim + inner)..<(r * convDim + inner + H * N)]
            c += convolved[(r * convDim + inner + H * N)..<((r + 1) * convDim)]
        }
        let y = ssdRecurrent(s, x: x, b: b, c: c, aLog: aLog, d: w.d).y
        var gated = [T](repeating: 0, count: rows * inner)
        for r in 0..<rows {
            for i in 0..<inner {
                let g = z[r * inner + i] + w.zBias[i]
                gated[r * inner + i] = y[r * inner + i] * g / (1 + T(Foundation.exp(-Double(g))))
            }
        }
        return linear(gated, w.outProj, rows: rows, inFeatures: inner, outFeatures: dModel)
    }
}
