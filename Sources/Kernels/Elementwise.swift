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

/// RMSNorm: y = x / sqrt(mean(x²) + eps) · weight, per row.
public enum RMSNorm {
    /// x, y: (rows, dim); rstd: (rows) saved for backward.
    public static func forward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               rstd: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float) {
        for r in 0..<rows {
            let xr = x + r * dim, yr = y + r * dim
            var sumSquares: Float = 0
            for j in 0..<dim { sumSquares += xr[j] * xr[j] }
            let s = 1 / (sumSquares / Float(dim) + eps).squareRoot()
            rstd[r] = s
            for j in 0..<dim { yr[j] = xr[j] * s * weight[j] }
        }
    }

    /// dx (overwritten, or added to when `accumulate`) and dWeight (+=) from dy.
    public static func backward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, dWeight: UnsafeMutablePointer<Float>,
                                rows: Int, dim: Int, accumulate: Bool = false) {
        for r in 0..<rows {
            let xr = x + r * dim, gr = dy + r * dim, dxr = dx + r * dim
            let s = rstd[r]
            // dot = Σ_j dy_j · w_j · x_j
            var dot: Float = 0
            for j in 0..<dim {
                dot += gr[j] * weight[j] * xr[j]
                dWeight[j] += gr[j] * xr[j] * s
            }
            let c = dot * s * s * s / Float(dim)
            for j in 0..<dim {
                let v = gr[j] * weight[j] * s - xr[j] * c
                dxr[j] = accumulate ? dxr[j] + v : v
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
                             cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, inverse: Bool = false) {
        let half = headDim / 2
        let sign: Float = inverse ? -1 : 1
        for b in 0..<batch {
            for t in 0..<length {
                let c = cos + t * half, s = sin + t * half
                for h in 0..<heads {
                    let v = x + ((b * length + t) * heads + h) * headDim
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

/// SwiGLU gate: h = silu(gate) ⊙ up.
public enum SwiGLU {
    @inline(__always) static func sigmoid(_ x: Float) -> Float { 1 / (1 + exp(-x)) }

    public static func forward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n { let g = gate[i]; out[i] = g * sigmoid(g) * up[i] }
    }

    /// dGate, dUp (overwritten) from dOut.
    public static func backward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count n: Int) {
        for i in 0..<n {
            let g = gate[i], sg = sigmoid(g), silu = g * sg
            dUp[i] = dOut[i] * silu
            dGate[i] = dOut[i] * up[i] * sg * (1 + g * (1 - sg))
        }
    }
}

/// Fused, numerically stable softmax + cross-entropy over rows of logits.
public enum SoftmaxCrossEntropy {
    /// logits (rows, vocab); returns Σ_rows −log p(target) in Float64. When `dLogits` is given it
    /// receives (softmax − onehot) · gradientScale (it may alias `logits`, computed in place).
    @discardableResult
    public static func forwardBackward(logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int, vocab: Int,
                                       dLogits: UnsafeMutablePointer<Float>?, gradientScale: Float) -> Double {
        var total = 0.0
        for r in 0..<rows {
            let z = logits + r * vocab
            var maximum = -Float.infinity
            for j in 0..<vocab { maximum = max(maximum, z[j]) }
            var sum: Float = 0
            for j in 0..<vocab { sum += exp(z[j] - maximum) }
            let logSum = log(sum) + maximum
            let target = Int(targets[r])
            total += Double(logSum - z[target])
            if let dLogits {
                let d = dLogits + r * vocab
                let inverse = 1 / sum
                for j in 0..<vocab { d[j] = exp(z[j] - maximum) * inverse * gradientScale }
                d[target] -= gradientScale
            }
        }
        return total
    }
}
