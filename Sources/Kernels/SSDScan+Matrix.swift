import Foundation

/// The materialised and recurrent forms of the same mixer as `SSDScan.forward`.
extension SSDScan {
    /// The mixing matrix M (B, H, T, T), row l the output position, column s the input:
    /// M[l, s] = (C_l · B_s) · Π_{k=s+1..l} a_k for s ≤ l, 0 above the diagonal, plus D_h on the
    /// diagonal when `d` is given — so y = M x per (sample, head), the layout of attention
    /// probabilities (what MOHAWK's first stage compares them with). The decay products are
    /// formed from cumulative sums in Float64, so long sequences keep their precision.
    public func mixingMatrix(b: StridedRows, c: StridedRows, aLog: StridedRows, d: UnsafePointer<Float>?,
                             matrix: UnsafeMutablePointer<Float>, threads: KernelThreads = .single) {
        let (T, N) = (length, stateSize)
        threads.forItems(batch * heads) { items in
            var cumulative = [Double](repeating: 0, count: T)
            for item in items {
                let (sample, h) = (item / heads, item % heads)
                let m = matrix + item * T * T, row0 = sample * length
                Matmul.gemm(transposeA: false, transposeB: true, m: T, n: T, k: N, a: c.row(row0) + h * N, lda: c.stride,
                            b: b.row(row0) + h * N, ldb: b.stride, c: m, ldc: T)
                cumulativeLogDecay(aLog, row0: row0, head: h, into: &cumulative)
                for l in 0..<T {
                    for s in 0..<T { m[l * T + s] = s <= l ? m[l * T + s] * Float(Foundation.exp(cumulative[l] - cumulative[s])) : 0 }
                    if let d { m[l * T + l] += d[h] }
                }
            }
        }
    }

    /// Gradients of the mixing matrix from dM (B, H, T, T) = ∂L/∂M: dB, dC, dA_log overwritten,
    /// dD (H) accumulated when given (∂L/∂D_h = Σ over samples and l of dM[l, l]). Entries of dM
    /// above the diagonal are ignored (M is 0 there whatever the parameters).
    public func mixingMatrixBackward(b: StridedRows, c: StridedRows, aLog: StridedRows, dMatrix: UnsafePointer<Float>,
                                     dB: MutableStridedRows, dC: MutableStridedRows, dALog: MutableStridedRows,
                                     dD: UnsafeMutablePointer<Float>?, threads: KernelThreads = .single) {
        let (T, N) = (length, stateSize)
        threads.forItems(batch * heads) { items in
            let g = UnsafeMutablePointer<Float>.allocate(capacity: 2 * T * T)
            defer { g.deallocate() }
            let dg = g + T * T
            var cumulative = [Double](repeating: 0, count: T)
            var dCumulative = [Double](repeating: 0, count: T)
            for item in items {
                let (sample, h) = (item / heads, item % heads)
                let dm = dMatrix + item * T * T, row0 = sample * length
                let bh = b.row(row0) + h * N, ch = c.row(row0) + h * N
                Matmul.gemm(transposeA: false, transposeB: true, m: T, n: T, k: N, a: ch, lda: c.stride, b: bh, ldb: b.stride,
                            c: g, ldc: T)
                cumulativeLogDecay(aLog, row0: row0, head: h, into: &cumulative)
                for i in 0..<T { dCumulative[i] = 0 }
                for l in 0..<T {
                    for s in 0..<T {
                        guard s <= l else { dg[l * T + s] = 0; continue }
                        let decay = Float(Foundation.exp(cumulative[l] - cumulative[s]))
                        let e = Double(dm[l * T + s] * g[l * T + s] * decay)
                        dCumulative[l] += e
                        dCumulative[s] -= e
                        dg[l * T + s] = dm[l * T + s] * decay
                    }
                }
                Matmul.gemm(transposeA: false, transposeB: false, m: T, n: N, k: T, a: dg, lda: T, b: bh, ldb: b.stride,
                            c: dC.row(row0) + h * N, ldc: dC.stride)
                Matmul.gemm(transposeA: true, transposeB: false, m: T, n: N, k: T, a: dg, lda: T, b: ch, ldb: c.stride,
                            c: dB.row(row0) + h * N, ldc: dB.stride)
                var suffix = 0.0
                for k in (0..<T).reversed() {
                    suffix += dCumulative[k]
                    dALog.row(row0 + k)[h] = -Float(suffix) * Self.sigmoid(aLog.row(row0 + k)[h])
                }
            }
        }
        if let dD {
            for h in 0..<heads {
                for sample in 0..<batch {
                    let dm = dMatrix + (sample * heads + h) * T * T
                    for l in 0..<T { dD[h] += dm[l * T + l] }
                }
            }
        }
    }

    /// The recurrent form, one position of `batch` independent sequences: per sample and head
    /// S ← a · S + B xᵀ, y = Sᵀ C + D ⊙ x, a = sigmoid(−A_log). Rows are samples: x (batch, H·P),
    /// B and C (batch, H·N), A_log (batch, H); `states` (batch, H, N, P) updated in place; y
    /// (batch, H·P). Memory and time per position do not depend on how many came before.
    public static func step(x: StridedRows, b: StridedRows, c: StridedRows, aLog: StridedRows, d: UnsafePointer<Float>,
                            states: UnsafeMutablePointer<Float>, y: UnsafeMutablePointer<Float>,
                            batch: Int, heads: Int, headDim: Int, stateSize: Int) {
        let (P, N) = (headDim, stateSize)
        for sample in 0..<batch {
            for h in 0..<heads {
                let xs = x.row(sample) + h * P, bs = b.row(sample) + h * N, cs = c.row(sample) + h * N
                let state = states + (sample * heads + h) * N * P, out = y + sample * heads * P + h * P
                let decay = exp(logDecay(aLog.row(sample)[h]))
                for n in 0..<N {
                    for p in 0..<P { state[n * P + p] = decay * state[n * P + p] + bs[n] * xs[p] }
                }
                for p in 0..<P { out[p] = d[h] * xs[p] }
                for n in 0..<N {
                    let weight = cs[n]
                    for p in 0..<P { out[p] += weight * state[n * P + p] }
                }
            }
        }
    }

    /// Float64 cumulative sums of log a over a whole sequence.
    private func cumulativeLogDecay(_ aLog: StridedRows, row0: Int, head: Int, into cumulative: inout [Double]) {
        var sum = 0.0
        for t in 0..<length {
            sum += Double(Self.logDecay(aLog.row(row0 + t)[head]))
            cumulative[t] = sum
        }
    }
}
