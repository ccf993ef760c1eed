import Foundation

/// Naive twins of every fast kernel: plain loops over arrays, generic over the scalar type so
/// tests can run them in Float64 for finite-difference checks and in Float32 against the fast
/// kernels. Shapes are given in comments as in the fast versions. Not for production use.
public enum Reference {
    /// C (m, n) = A (m, k) · B (k, n), with optional transposes of the stored operands.
    public static func matmul<T: BinaryFloatingPoint>(_ a: [T], _ b: [T], m: Int, n: Int, k: Int,
                                                      transposeA: Bool = false, transposeB: Bool = false) -> [T] {
        var c = [T](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var s: T = 0
                for p in 0..<k {
                    let av = transposeA ? a[p * m + i] : a[i * k + p]
                    let bv = transposeB ? b[j * k + p] : b[p * n + j]
                    s += av * bv
                }
                c[i * n + j] = s
            }
        }
        return c
    }

    /// out (tokens, dim) = table[tokens[i]], table (vocab, dim)
    public static func embedding<T: BinaryFloatingPoint>(_ tokens: [Int], table: [T], dim: Int) -> [T] {
        var out: [T] = []
        out.reserveCapacity(tokens.count * dim)
        for token in tokens { for j in 0..<dim { out.append(table[token * dim + j]) } }
        return out
    }

    /// y (rows, out) = x (rows, in) · Wᵀ, W (out, in)
    public static func linear<T: BinaryFloatingPoint>(_ x: [T], _ w: [T], rows: Int, inFeatures: Int, outFeatures: Int) -> [T] {
        matmul(x, w, m: rows, n: outFeatures, k: inFeatures, transposeB: true)
    }

    public static func rmsNorm<T: BinaryFloatingPoint>(_ x: [T], _ w: [T], rows: Int, dim: Int, eps: T) -> [T] {
        var y = x
        for r in 0..<rows {
            var ss: T = 0
            for j in 0..<dim { ss += x[r * dim + j] * x[r * dim + j] }
            let s = 1 / (ss / T(dim) + eps).squareRoot()
            for j in 0..<dim { y[r * dim + j] = x[r * dim + j] * s * w[j] }
        }
        return y
    }

    /// Rotate-half RoPE of x (batch, T, heads, D) at the given positions.
    public static func rope<T: BinaryFloatingPoint>(_ x: [T], batch: Int, length: Int, heads: Int, headDim: Int,
                                                   positions: [Int], theta: Double) -> [T] {
        var y = x
        let half = headDim / 2
        for b in 0..<batch { for t in 0..<length { for h in 0..<heads {
            let base = ((b * length + t) * heads + h) * headDim
            for i in 0..<half {
                let angle = Double(positions[t]) * pow(theta, -2 * Double(i) / Double(headDim))
                let c = T(cos(angle)), s = T(sin(angle))
                let x1 = x[base + i], x2 = x[base + i + half]
                y[base + i] = x1 * c - x2 * s
                y[base + i + half] = x2 * c + x1 * s
            }
        } } }
        return y
    }

    public static func swiglu<T: BinaryFloatingPoint>(gate: [T], up: [T]) -> [T] {
        zip(gate, up).map { g, u in g / (1 + T(exp(-Double(g)))) * u }
    }

    /// Mean cross-entropy of rows of logits (rows, vocab) against targets.
    public static func crossEntropy<T: BinaryFloatingPoint>(_ logits: [T], targets: [Int], vocab: Int) -> T {
        var total = 0.0
        for (r, target) in targets.enumerated() {
            let row = (0..<vocab).map { Double(logits[r * vocab + $0]) }
            let maximum = row.max()!
            let logSum = log(row.map { exp($0 - maximum) }.reduce(0, +)) + maximum
            total += logSum - row[target]
        }
        return T(total / Double(targets.count))
    }

    /// ∂(scale · Σ_rows −log p(target))/∂logits (rows, vocab): (softmax − onehot) · scale, in Float64.
    public static func crossEntropyGradient<T: BinaryFloatingPoint>(_ logits: [T], targets: [Int], vocab: Int, scale: Double) -> [T] {
        var gradient = [T](repeating: 0, count: logits.count)
        for (r, target) in targets.enumerated() {
            let row = (0..<vocab).map { Double(logits[r * vocab + $0]) }
            let maximum = row.max()!
            let sum = row.map { exp($0 - maximum) }.reduce(0, +)
            for j in 0..<vocab { gradient[r * vocab + j] = T((exp(row[j] - maximum) / sum - (j == target ? 1 : 0)) * scale) }
        }
        return gradient
    }

    /// `steps` AdamW updates (torch.optim.AdamW's formula, decoupled weight decay) from p, with
    /// m = v = 0 and gradient `gradients[t − 1]` at step t; returns the parameters.
    public static func adamW(_ p: [Double], gradients: [[Double]], lr: Double, beta1: Double, beta2: Double, eps: Double,
                             weightDecay: Double) -> [Double] {
        var p = p, m = [Double](repeating: 0, count: p.count), v = m
        for (index, g) in gradients.enumerated() {
            let t = Double(index + 1)
            for i in p.indices {
                p[i] *= 1 - lr * weightDecay
                m[i] = beta1 * m[i] + (1 - beta1) * g[i]
                v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
                p[i] -= lr * (m[i] / (1 - pow(beta1, t))) / ((v[i] / (1 - pow(beta2, t))).squareRoot() + eps)
            }
        }
        return p
    }

    /// Causal attention, q/o (B, T, Hq, D), k/v (B, T, Hkv, D), one scalar at a time.
    public static func attention<T: BinaryFloatingPoint>(q: [T], k: [T], v: [T], batch: Int, length: Int,
                                                        heads: Int, kvHeads: Int, headDim: Int) -> [T] {
        var o = [T](repeating: 0, count: q.count)
        let scale = 1 / T(Double(headDim).squareRoot())
        for b in 0..<batch { for h in 0..<heads {
            let kvh = h / (heads / kvHeads)
            for i in 0..<length {
                var scores = [Double](repeating: 0, count: i + 1)
                for j in 0...i {
                    var s: T = 0
                    for d in 0..<headDim {
                        s += q[((b * length + i) * heads + h) * headDim + d] * k[((b * length + j) * kvHeads + kvh) * headDim + d]
                    }
                    scores[j] = Double(s * scale)
                }
                let maximum = scores.max()!
                let weights = scores.map { exp($0 - maximum) }
                let sum = weights.reduce(0, +)
                for d in 0..<headDim {
                    var acc = 0.0
                    for j in 0...i { acc += weights[j] / sum * Double(v[((b * length + j) * kvHeads + kvh) * headDim + d]) }
                    o[((b * length + i) * heads + h) * headDim + d] = T(acc)
                }
            }
        } }
        return o
    }
}
