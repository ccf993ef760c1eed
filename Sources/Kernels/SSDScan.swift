import Foundation

/// The state-space mixer of the discrete Mamba-2 (Phi-Mamba's `discrete_mamba2`), in its
/// chunked "state-space dual" form for training.
///
/// Per sample and head h, with the decay a_t = exp(−softplus(A_log_t)) = sigmoid(−A_log_t):
///   S_t = a_t · S_{t−1} + B_t x_tᵀ   (state N × P, S_{−1} = 0),   y_t = S_tᵀ C_t + D_h · x_t,
/// which is y = M x with the mixing matrix
///   M[l, s] = (C_l · B_s) · Π_{k=s+1..l} a_k  for s ≤ l (0 above the diagonal), plus D_h on the diagonal.
///
/// The sequence is cut into chunks of `chunkSize` (the last one may be shorter): within a chunk
/// the masked quadratic form (C Bᵀ ∘ decay) x, across chunks the state passed from one to the
/// next. All products are `Matmul.gemm` calls; (sample, head) pairs are split over the kernel
/// threads, each computed by the same code whatever the split, so results do not depend on the
/// thread count.
///
/// Layouts (row b·T + t): x (B·T, H·P), B and C (B·T, H·N), A_log (B·T, H), each possibly a
/// column slice of a wider matrix (`StridedRows`); y (B·T, H·P); D (H); states (B, H, N, P).
public struct SSDScan: Equatable, Sendable {
    public let batch: Int, length: Int, heads: Int, headDim: Int, stateSize: Int, chunkSize: Int

    public init(batch: Int, length: Int, heads: Int, headDim: Int, stateSize: Int, chunkSize: Int) {
        precondition(batch > 0 && length > 0 && heads > 0 && headDim > 0 && stateSize > 0 && chunkSize > 0,
                     "SSDScan: sizes must be positive")
        self.batch = batch; self.length = length; self.heads = heads
        self.headDim = headDim; self.stateSize = stateSize; self.chunkSize = chunkSize
    }

    public var chunks: Int { (length + chunkSize - 1) / chunkSize }
    /// Floats of the states entering every chunk, (B, H, chunks, N, P): what `forward` keeps
    /// for `backward`.
    public var chunkStateCount: Int { batch * heads * chunks * stateSize * headDim }
    /// Floats of the states after the last position, (B, H, N, P).
    public var finalStateCount: Int { batch * heads * stateSize * headDim }

    /// log a = −softplus(A_log), computed without overflow.
    @inline(__always) public static func logDecay(_ aLog: Float) -> Float {
        -(max(aLog, 0) + log1p(exp(-abs(aLog))))
    }

    @inline(__always) static func sigmoid(_ z: Float) -> Float { 1 / (1 + exp(-z)) }

    /// y (B·T, H·P) = SSM(x) + D ⊙ x. `chunkStates` (`chunkStateCount`) receives the state
    /// entering each chunk, needed by `backward`; `finalStates` (`finalStateCount`) the state
    /// after the last position (to continue recurrently with `step`).
    public func forward(x: StridedRows, b: StridedRows, c: StridedRows, aLog: StridedRows, d: UnsafePointer<Float>,
                        y: UnsafeMutablePointer<Float>, chunkStates: UnsafeMutablePointer<Float>?,
                        finalStates: UnsafeMutablePointer<Float>? = nil, threads: KernelThreads = .single) {
        forEachItem(threads: threads) { sample, h, work in
            forwardItem(sample: sample, head: h, x: x, b: b, c: c, aLog: aLog, d: d, y: y,
                        chunkStates: chunkStates, finalStates: finalStates, work: work)
        }
    }

    /// body(sample, head, workspace) for every (sample, head) pair, split over the kernel threads.
    func forEachItem(threads: KernelThreads, _ body: (Int, Int, Workspace) -> Void) {
        threads.forItems(batch * heads) { items in
            let work = Workspace(self)
            defer { work.deallocate() }
            for item in items { body(item / heads, item % heads, work) }
        }
    }

    private func forwardItem(sample: Int, head h: Int, x: StridedRows, b: StridedRows, c: StridedRows, aLog: StridedRows,
                             d: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, chunkStates: UnsafeMutablePointer<Float>?,
                             finalStates: UnsafeMutablePointer<Float>?, work: Workspace) {
        let (P, N, yStride) = (headDim, stateSize, heads * headDim)
        let (cs, g, scaled, state) = (work.cumulative, work.g, work.scaledA, work.state)
        state.update(repeating: 0, count: N * P)
        for chunk in 0..<chunks {
            let t0 = chunk * chunkSize, L = min(chunkSize, length - t0), row0 = sample * length + t0
            let xc = x.row(row0) + h * P, bc = b.row(row0) + h * N, cc = c.row(row0) + h * N
            let yc = y + row0 * yStride + h * P
            cumulativeLogDecay(aLog, row0: row0, count: L, head: h, into: cs)
            if let chunkStates { (chunkStates + chunkStateOffset(sample, h, chunk)).update(from: state, count: N * P) }
            // Within the chunk: y = (C Bᵀ ∘ decay) x, decay[i, j] = exp(cs_i − cs_j) for j ≤ i.
            Matmul.gemm(transposeA: false, transposeB: true, m: L, n: L, k: N, a: cc, lda: c.stride, b: bc, ldb: b.stride,
                        c: g, ldc: L)
            for i in 0..<L {
                for j in 0..<L { g[i * L + j] = j <= i ? g[i * L + j] * exp(cs[i] - cs[j]) : 0 }
            }
            Matmul.gemm(transposeA: false, transposeB: false, m: L, n: P, k: L, a: g, lda: L, b: xc, ldb: x.stride,
                        c: yc, ldc: yStride)
            // From earlier chunks: y_i += exp(cs_i) · Sᵀ C_i.
            if chunk > 0 { addStateReadout(row0: row0, count: L, head: h, c: c, state: state, y: y, work: work) }
            let skip = d[h]
            for i in 0..<L {
                for p in 0..<P { yc[i * yStride + p] += skip * xc[i * x.stride + p] }
            }
            // The state leaving the chunk: S ← exp(cs_last) S + Σ_j exp(cs_last − cs_j) B_j x_jᵀ.
            if chunk < chunks - 1 || finalStates != nil {
                let last = cs[L - 1]
                for j in 0..<L {
                    let w = exp(last - cs[j])
                    for n in 0..<N { scaled[j * N + n] = w * bc[j * b.stride + n] }
                }
                let carry = exp(last)
                for i in 0..<(N * P) { state[i] *= carry }
                Matmul.gemm(transposeA: true, transposeB: false, m: N, n: P, k: L, a: scaled, lda: N, b: xc, ldb: x.stride,
                            beta: 1, c: state, ldc: P)
            }
        }
        if let finalStates { (finalStates + (sample * heads + h) * N * P).update(from: state, count: N * P) }
    }

    /// Gradients from dY (B·T, H·P) = ∂L/∂y: dx, dB, dC, dA_log overwritten (the columns of
    /// this layout only), dD (H) accumulated. `chunkStates` are the forward pass's. With
    /// `dInitialStates` (B, H, N, P) the scan started from the states in `chunkStates`' first
    /// chunk (`addInitialStates`), and ∂L/∂(initial states) is written there.
    public func backward(x: StridedRows, b: StridedRows, c: StridedRows, aLog: StridedRows, d: UnsafePointer<Float>,
                         chunkStates: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                         dx: MutableStridedRows, dB: MutableStridedRows, dC: MutableStridedRows, dALog: MutableStridedRows,
                         dD: UnsafeMutablePointer<Float>, dInitialStates: UnsafeMutablePointer<Float>? = nil,
                         threads: KernelThreads = .single) {
        var skipPartials = [Float](repeating: 0, count: batch * heads)
        skipPartials.withUnsafeMutableBufferPointer { partials in
            let partials = partials.baseAddress!
            forEachItem(threads: threads) { sample, h, work in
                partials[sample * heads + h] = backwardItem(sample: sample, head: h, x: x, b: b, c: c, aLog: aLog, d: d,
                                                            chunkStates: chunkStates, dY: dY, dx: dx, dB: dB, dC: dC, dALog: dALog,
                                                            dInitialStates: dInitialStates, work: work)
            }
        }
        for h in 0..<heads {
            for s in 0..<batch { dD[h] += skipPartials[s * heads + h] }
        }
    }

    /// One (sample, head): walks the chunks backwards carrying dS = ∂L/∂(state leaving the
    /// chunk); returns this pair's share of ∂L/∂D_h.
    private func backwardItem(sample: Int, head h: Int, x: StridedRows, b: StridedRows, c: StridedRows, aLog: StridedRows,
                              d: UnsafePointer<Float>, chunkStates: UnsafePointer<Float>, dY: UnsafePointer<Float>,
                              dx: MutableStridedRows, dB: MutableStridedRows, dC: MutableStridedRows, dALog: MutableStridedRows,
                              dInitialStates: UnsafeMutablePointer<Float>?, work: Workspace) -> Float {
        let (P, N, yStride) = (headDim, stateSize, heads * headDim)
        let (cs, dcs, g, dg) = (work.cumulative, work.dCumulative, work.g, work.dg)
        let (scaled, product, dState) = (work.scaledA, work.scaledB, work.dState)
        dState.update(repeating: 0, count: N * P)
        var skipGradient: Float = 0
        let skip = d[h], fromState = dInitialStates != nil
        for chunk in (0..<chunks).reversed() {
            let t0 = chunk * chunkSize, L = min(chunkSize, length - t0), row0 = sample * length + t0
            let xc = x.row(row0) + h * P, bc = b.row(row0) + h * N, cc = c.row(row0) + h * N
            let dyc = dY + row0 * yStride + h * P
            let dxc = dx.row(row0) + h * P, dbc = dB.row(row0) + h * N, dcc = dC.row(row0) + h * N
            let previous = chunkStates + chunkStateOffset(sample, h, chunk)
            cumulativeLogDecay(aLog, row0: row0, count: L, head: h, into: cs)
            dcs.update(repeating: 0, count: L)
            for i in 0..<L {
                for p in 0..<P { skipGradient += dyc[i * yStride + p] * xc[i * x.stride + p] }
            }
            // Within the chunk. g: C Bᵀ, then the masked, decayed G̃; dg: dY xᵀ, then ∂L/∂(C Bᵀ).
            Matmul.gemm(transposeA: false, transposeB: true, m: L, n: L, k: N, a: cc, lda: c.stride, b: bc, ldb: b.stride,
                        c: g, ldc: L)
            Matmul.gemm(transposeA: false, transposeB: true, m: L, n: L, k: P, a: dyc, lda: yStride, b: xc, ldb: x.stride,
                        c: dg, ldc: L)
            for i in 0..<L {
                for j in 0..<L {
                    guard j <= i else { g[i * L + j] = 0; dg[i * L + j] = 0; continue }
                    let decay = exp(cs[i] - cs[j]), decayed = g[i * L + j] * decay
                    let e = dg[i * L + j] * decayed   // ∂L/∂(cs_i − cs_j)
                    dcs[i] += e
                    dcs[j] -= e
                    dg[i * L + j] *= decay
                    g[i * L + j] = decayed
                }
            }
            Matmul.gemm(transposeA: true, transposeB: false, m: L, n: P, k: L, a: g, lda: L, b: dyc, ldb: yStride,
                        c: dxc, ldc: dx.stride)
            for i in 0..<L {
                for p in 0..<P { dxc[i * dx.stride + p] += skip * dyc[i * yStride + p] }
            }
            Matmul.gemm(transposeA: false, transposeB: false, m: L, n: N, k: L, a: dg, lda: L, b: bc, ldb: b.stride,
                        c: dcc, ldc: dC.stride)
            Matmul.gemm(transposeA: true, transposeB: false, m: L, n: N, k: L, a: dg, lda: L, b: cc, ldb: c.stride,
                        c: dbc, ldc: dB.stride)
            // From earlier chunks (y_i += exp(cs_i) Sᵀ C_i; S = 0 entering the first chunk unless fromState).
            if chunk > 0 || fromState {
                Matmul.gemm(transposeA: false, transposeB: true, m: L, n: N, k: P, a: dyc, lda: yStride, b: previous, ldb: P,
                            c: product, ldc: N)
                for i in 0..<L {
                    let e = exp(cs[i])
                    var dot: Float = 0
                    for n in 0..<N {
                        let v = e * product[i * N + n]
                        dcc[i * dC.stride + n] += v
                        dot += v * cc[i * c.stride + n]
                    }
                    dcs[i] += dot
                }
            }
            // Into later chunks (the state leaving this one; dS = 0 after the last chunk).
            let last = cs[L - 1]
            if chunk < chunks - 1 {
                addStateLeavingGradient(row0: row0, count: L, head: h, x: x, b: b, dx: dx, dB: dB, dState: dState,
                                        previous: chunk > 0 || fromState ? previous : nil, work: work)
            }
            // ∂L/∂(state entering this chunk) = exp(cs_last) dS + Σ_i exp(cs_i) C_i dY_iᵀ.
            if chunk > 0 || fromState {
                let carry = exp(last)
                for i in 0..<(N * P) { dState[i] *= carry }
                for i in 0..<L {
                    let e = exp(cs[i])
                    for n in 0..<N { scaled[i * N + n] = e * cc[i * c.stride + n] }
                }
                Matmul.gemm(transposeA: true, transposeB: false, m: N, n: P, k: L, a: scaled, lda: N, b: dyc, ldb: yStride,
                            beta: 1, c: dState, ldc: P)
            }
            logDecayGradient(row0: row0, count: L, head: h, aLog: aLog, dALog: dALog, adding: false, work: work)
        }
        if let dInitialStates { (dInitialStates + (sample * heads + h) * N * P).update(from: dState, count: N * P) }
        return skipGradient
    }

    /// y (the chunk's rows) += exp(cs_i) · stateᵀ C_i: the state entering a chunk read out at its
    /// positions (cs in `work.cumulative`).
    func addStateReadout(row0: Int, count L: Int, head h: Int, c: StridedRows, state: UnsafePointer<Float>,
                         y: UnsafeMutablePointer<Float>, work: Workspace) {
        let (P, N, cs, scaled) = (headDim, stateSize, work.cumulative, work.scaledA)
        let cc = c.row(row0) + h * N
        for i in 0..<L {
            let e = exp(cs[i])
            for n in 0..<N { scaled[i * N + n] = e * cc[i * c.stride + n] }
        }
        Matmul.gemm(transposeA: false, transposeB: false, m: L, n: P, k: N, a: scaled, lda: N, b: state, ldb: P,
                    beta: 1, c: y + row0 * heads * P + h * P, ldc: heads * P)
    }

    /// From dState = ∂L/∂(the state leaving a chunk), S_out = exp(cs_last) S_in + Σ_j exp(cs_last − cs_j) B_j x_jᵀ:
    /// adds to dx and dB of the chunk's rows and to dcs (`work`); S_in's decay term when `previous` (S_in) is given.
    func addStateLeavingGradient(row0: Int, count L: Int, head h: Int, x: StridedRows, b: StridedRows, dx: MutableStridedRows,
                                 dB: MutableStridedRows, dState: UnsafePointer<Float>, previous: UnsafePointer<Float>?,
                                 work: Workspace) {
        let (P, N, cs, dcs) = (headDim, stateSize, work.cumulative, work.dCumulative)
        let (scaled, product, last) = (work.scaledA, work.scaledB, work.cumulative[L - 1])
        let xc = x.row(row0) + h * P, bc = b.row(row0) + h * N, dxc = dx.row(row0) + h * P, dbc = dB.row(row0) + h * N
        for j in 0..<L {
            let w = exp(last - cs[j])
            for n in 0..<N { scaled[j * N + n] = w * bc[j * b.stride + n] }
        }
        Matmul.gemm(transposeA: false, transposeB: false, m: L, n: P, k: N, a: scaled, lda: N, b: dState, ldb: P,
                    beta: 1, c: dxc, ldc: dx.stride)
        Matmul.gemm(transposeA: false, transposeB: true, m: L, n: N, k: P, a: xc, lda: x.stride, b: dState, ldb: P,
                    c: product, ldc: N)
        for j in 0..<L {
            let w = exp(last - cs[j])
            var q: Float = 0
            for n in 0..<N {
                let v = w * product[j * N + n]
                dbc[j * dB.stride + n] += v
                q += v * bc[j * b.stride + n]
            }
            dcs[j] -= q
            dcs[L - 1] += q
        }
        if let previous {
            var dot: Float = 0
            for i in 0..<(N * P) { dot += dState[i] * previous[i] }
            dcs[L - 1] += exp(last) * dot
        }
    }

    /// cs_i = Σ_{k ≤ i} log a_k: ∂L/∂log a_k = Σ_{i ≥ k} ∂L/∂cs_i (dcs in `work`); log a = −softplus(A_log).
    /// Written into dA_log, or added to it when `adding`.
    func logDecayGradient(row0: Int, count L: Int, head h: Int, aLog: StridedRows, dALog: MutableStridedRows, adding: Bool,
                          work: Workspace) {
        var suffix: Float = 0
        for k in (0..<L).reversed() {
            suffix += work.dCumulative[k]
            let value = -suffix * Self.sigmoid(aLog.row(row0 + k)[h]), to = dALog.row(row0 + k) + h
            to.pointee = adding ? to.pointee + value : value
        }
    }

    func chunkStateOffset(_ sample: Int, _ head: Int, _ chunk: Int) -> Int {
        ((sample * heads + head) * chunks + chunk) * stateSize * headDim
    }

    /// cs[i] = Σ_{k ≤ i} log a_{t0 + k} within one chunk.
    func cumulativeLogDecay(_ aLog: StridedRows, row0: Int, count: Int, head: Int, into cs: UnsafeMutablePointer<Float>) {
        var sum: Float = 0
        for i in 0..<count {
            sum += Self.logDecay(aLog.row(row0 + i)[head])
            cs[i] = sum
        }
    }

    /// Per-thread buffers of one (sample, head) computation.
    final class Workspace {
        let storage: UnsafeMutablePointer<Float>
        let cumulative, dCumulative, g, dg, scaledA, scaledB, state, dState: UnsafeMutablePointer<Float>

        init(_ scan: SSDScan) {
            let (Q, N, P) = (min(scan.chunkSize, scan.length), scan.stateSize, scan.headDim)
            let sizes = [Q, Q, Q * Q, Q * Q, Q * N, Q * N, N * P, N * P]
            storage = .allocate(capacity: sizes.reduce(0, +))
            var offsets: [Int] = [], at = 0
            for size in sizes { offsets.append(at); at += size }
            (cumulative, dCumulative, g, dg) = (storage + offsets[0], storage + offsets[1], storage + offsets[2], storage + offsets[3])
            (scaledA, scaledB, state, dState) = (storage + offsets[4], storage + offsets[5], storage + offsets[6], storage + offsets[7])
        }

        func deallocate() { storage.deallocate() }
    }
}
