import Foundation

/// Token embedding: rows of a (vocab, dim) table.
public enum Embedding {
    /// out (n, dim) = table[tokens[i]]
    public static func forward(tokens: UnsafePointer<Int32>, count n: Int, table: UnsafePointer<Float>, dim: Int,
                               out: UnsafeMutablePointer<Float>) {
        for i in 0..<n { (out + i * dim).update(from: table + Int(tokens[i]) * dim, count: dim) }
    }

    /// dTable[tokens[i]] += dOut[i]
    public static func backward(tokens: UnsafePointer<Int32>, count n: Int, dOut: UnsafePointer<Float>, dim: Int,
                                dTable: UnsafeMutablePointer<Float>) {
        for i in 0..<n {
            let row = dTable + Int(tokens[i]) * dim, g = dOut + i * dim
            for j in 0..<dim { row[j] += g[j] }
        }
    }
}

/// RMSNorm: y = x / sqrt(mean(x²) + eps) · weight, per row. Rows are split over the kernel
/// threads; the weight gradient is summed over rows in order, so results do not depend on the
/// thread count.
public enum RMSNorm {
    /// x, y: (rows, dim); rstd: (rows) saved for backward.
    public static func forward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               rstd: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float,
                               threads: KernelThreads = .single) {
        threads.forRanges(rows, minimumChunk: max(1, 16_384 / max(dim, 1))) { range in
            for r in range {
                let xr = x + r * dim, yr = y + r * dim
                let s = 1 / (VectorMath.dot(xr, xr, count: dim) / Float(dim) + eps).squareRoot()
                rstd[r] = s
                for j in 0..<dim { yr[j] = xr[j] * s * weight[j] }
            }
        }
    }

    /// dx (overwritten, or added to when `accumulate`) and dWeight (+=) from dy.
    public static func backward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, dWeight: UnsafeMutablePointer<Float>,
                                rows: Int, dim: Int, accumulate: Bool = false, threads: KernelThreads = .single) {
        // dWeight_j += Σ_r dy_rj · x_rj · s_r, rows in order, 8 columns at a time (the compiler
        // cannot vectorise the scalar loop: dWeight might alias the inputs).
        for r in 0..<rows {
            let xr = x + r * dim, gr = dy + r * dim, s = VectorMath.Lanes(repeating: rstd[r])
            var j = 0
            while j + 8 <= dim {
                VectorMath.store(VectorMath.load(dWeight + j) + VectorMath.load(gr + j) * VectorMath.load(xr + j) * s, dWeight + j)
                j += 8
            }
            while j < dim { dWeight[j] += gr[j] * xr[j] * rstd[r]; j += 1 }
        }
        threads.forRanges(rows, minimumChunk: max(1, 16_384 / max(dim, 1))) { range in
            let work = UnsafeMutablePointer<Float>.allocate(capacity: max(dim, 1))
            defer { work.deallocate() }
            for r in range {
                let xr = x + r * dim, gr = dy + r * dim, dxr = dx + r * dim
                let s = rstd[r]
                for j in 0..<dim { work[j] = gr[j] * weight[j] }
                let c = VectorMath.dot(work, xr, count: dim) * s * s * s / Float(dim)   // Σ_j dy_j · w_j · x_j
                for j in 0..<dim {
                    let v = work[j] * s - xr[j] * c
                    dxr[j] = accumulate ? dxr[j] + v : v
                }
            }
        }
    }
}

/// Rotary position embedding, rotate-half convention (Llama / Hugging Face): within each head,
/// element i pairs with i + D/2 and both turn by the angle position · theta^(−2i/D).
public enum RoPE {
    /// Cosine and sine tables for the given positions: (positions, D/2) each.
    public static func tables(positions: [Int], headDim: Int, theta: Float) -> (cos: [Float], sin: [Float]) {
        let half = headDim / 2
        var c = [Float](repeating: 0, count: positions.count * half), s = c
        for (p, position) in positions.enumerated() {
            for i in 0..<half {
                let inverseFrequency = pow(Double(theta), -2 * Double(i) / Double(headDim))
                let angle = Double(position) * inverseFrequency
                c[p * half + i] = Float(cos(angle))
                s[p * half + i] = Float(sin(angle))
            }
        }
        return (c, s)
    }

    /// Rotates in place x: (batch, T, heads, D); tables are (T, D/2). `inverse` turns backwards,
    /// which is the backward pass (a rotation's transpose is its inverse).
    public static func apply(_ x: UnsafeMutablePointer<Float>, batch: Int, length: Int, heads: Int, headDim: Int,
                             cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, inverse: Bool = false,
                             threads: KernelThreads = .single) {
        let half = headDim / 2
        let sign: Float = inverse ? -1 : 1
        threads.forRanges(batch * length, minimumChunk: max(1, 16_384 / max(heads * headDim, 1))) { rows in
            for row in rows {
                let t = row % length
                let c = cos + t * half, s = sin + t * half
                for h in 0..<heads {
                    let v = x + (row * heads + h) * headDim
                    for i in 0..<half {
                        let x1 = v[i], x2 = v[i + half], si = sign * s[i]
                        v[i] = x1 * c[i] - x2 * si
                        v[i + half] = x2 * c[i] + x1 * si
                    }
                }
            }
        }
    }
}

/// SwiGLU gate: h = silu(gate) ⊙ up, vectorised and split over the kernel threads.
public enum SwiGLU {
    public static func forward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count n: Int,
                               threads: KernelThreads = .single) {
        threads.forRanges(n) { range in
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                let g = VectorMath.load(gate + i)
                let sigmoid = 1 / (1 + VectorMath.exp(-g))
                VectorMath.store(g * sigmoid * VectorMath.load(up + i), out + i)
                i += 8
            }
            for j in i..<range.upperBound { let g = gate[j]; out[j] = g / (1 + Foundation.exp(-g)) * up[j] }
        }
    }

    /// dGate, dUp (overwritten) from dOut.
    public static func backward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count n: Int,
                                threads: KernelThreads = .single) {
        threads.forRanges(n) { range in
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                let g = VectorMath.load(gate + i), d = VectorMath.load(dOut + i)
                let sg = 1 / (1 + VectorMath.exp(-g))
                VectorMath.store(d * g * sg, dUp + i)
                VectorMath.store(d * VectorMath.load(up + i) * sg * (1 + g * (1 - sg)), dGate + i)
                i += 8
            }
            for j in i..<range.upperBound {
                let g = gate[j], sg = 1 / (1 + Foundation.exp(-g))
                dUp[j] = dOut[j] * g * sg
                dGate[j] = dOut[j] * up[j] * sg * (1 + g * (1 - sg))
            }
        }
    }
}

/// SwiGLU whose outputs only feed bf16 products: each value rounded to bf16 (`BF16.round`) as
/// it is made, so the products read half the bytes and round nothing. The same bits as
/// rounding the Float32 functions' outputs (chunks of them, on the same ranges, in L1).
extension SwiGLU {
    /// Values per chunk: a multiple of the vector width, so chunks keep the ranges' vector/scalar split.
    static let chunk = 2048

    /// `forward` with h rounded to bf16.
    public static func forward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, bf16 out: UnsafeMutablePointer<UInt16>,
                               count n: Int, threads: KernelThreads = .single) {
        threads.forRanges(n) { range in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
            defer { scratch.deallocate() }
            for i in stride(from: range.lowerBound, to: range.upperBound, by: chunk) {
                let c = min(chunk, range.upperBound - i)
                forward(gate: gate + i, up: up + i, out: scratch, count: c)
                BF16.round(scratch, into: out + i, count: c)
            }
        }
    }

    /// `backward` with dGate and dUp rounded to bf16.
    public static func backward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                bf16 dGate: UnsafeMutablePointer<UInt16>, dUp: UnsafeMutablePointer<UInt16>, count n: Int,
                                threads: KernelThreads = .single) {
        threads.forRanges(n) { range in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * chunk)
            defer { scratch.deallocate() }
            for i in stride(from: range.lowerBound, to: range.upperBound, by: chunk) {
                let c = min(chunk, range.upperBound - i)
                backward(gate: gate + i, up: up + i, dOut: dOut + i, dGate: scratch, dUp: scratch + chunk, count: c)
                BF16.round(scratch, into: dGate + i, count: c)
                BF16.round(scratch + chunk, into: dUp + i, count: c)
            }
        }
    }
}

/// Fused, numerically stable softmax + cross-entropy over rows of logits.
public enum SoftmaxCrossEntropy {
    /// logits (rows, vocab); returns Σ_rows −log p(target) in Float64. When `dLogits` is given it
    /// receives (softmax − onehot) · gradientScale (it may alias `logits`, computed in place).
    @discardableResult
    public static func forwardBackward(logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int, vocab: Int,
                                       dLogits: UnsafeMutablePointer<Float>?, gradientScale: Float,
                                       threads: KernelThreads = .single) -> Double {
        // Per-row losses, summed in row order afterwards: the same bits for any thread count.
        let losses = UnsafeMutablePointer<Float>.allocate(capacity: max(rows, 1))
        defer { losses.deallocate() }
        let scratch = dLogits == nil ? UnsafeMutablePointer<Float>.allocate(capacity: max(rows * vocab, 1)) : nil
        defer { scratch?.deallocate() }
        let exps = dLogits ?? scratch!
        threads.forRanges(rows, minimumChunk: max(1, 16_384 / max(vocab, 1))) { range in
            for r in range {
                let z = logits + r * vocab, e = exps + r * vocab
                var maximum = -Float.infinity
                for j in 0..<vocab { maximum = max(maximum, z[j]) }
                let target = Int(targets[r])
                let targetLogit = z[target]
                for j in 0..<vocab { e[j] = z[j] - maximum }   // may overwrite z when aliased
                VectorMath.exp(e, e, count: vocab)
                var sum: Float = 0
                for j in 0..<vocab { sum += e[j] }
                losses[r] = log(sum) + maximum - targetLogit
                if dLogits != nil {
                    let scale = gradientScale / sum
                    for j in 0..<vocab { e[j] *= scale }
                    e[target] -= gradientScale
                }
            }
        }
        var total = 0.0
        for r in 0..<rows { total += Double(losses[r]) }
        return total
    }
}
