import Foundation

/// One comparison of a self-test (`tessera selftest kernels`, `tessera selftest pinned`): the
/// largest error of what this build computed against its reference, and the tolerance.
public struct SelfTestOutcome: CustomStringConvertible, Sendable {
    public let name: String
    public let error: Double, tolerance: Double
    /// A NaN error fails (NaN ≤ tolerance is false).
    public var passed: Bool { error <= tolerance }

    public init(name: String, error: Double, tolerance: Double) {
        self.name = name; self.error = error; self.tolerance = tolerance
    }

    public var description: String {
        "\(passed ? "ok  " : "FAIL") \(name): max error \(String(format: "%.3g", error)) (tolerance \(String(format: "%.0e", tolerance)))"
    }
}

/// Every fast kernel against its naive twin (`Reference`, in Float64) on awkward sizes (odd,
/// prime, a tile or a vector width ± 1), in whatever build runs it: `tessera selftest kernels`
/// runs it in the release binary (`-Ounchecked`, AVX2 + FMA on x86-64), whose code the unit
/// tests (a debug build) never execute. The unit tests hold the same kernels to the same
/// tolerances on more sizes; this is the release build's share, a few seconds.
public enum KernelSelfTest {
    public typealias Outcome = SelfTestOutcome

    /// Tolerances: a Float32 kernel against the Float64 definition, relative with a floor of 1
    /// (what the unit tests use for the same kernels: a few roundings per term of a sum).
    static let tolerance = 1e-5, ssdTolerance = 2e-5, optimizerTolerance = 1e-6

    /// Every comparison, with the kernels' work split over `threads`.
    public static func run(threads: KernelThreads = .single) -> [Outcome] {
        products(threads) + elementwise(threads) + attention(threads) + stateSpace(threads) + optimizer(threads)
    }

    /// max |fast − reference| / max(1, |reference|); a NaN, or an infinity on one side only,
    /// is an infinite error (equal infinities agree).
    public static func error<F: BinaryFloatingPoint, R: BinaryFloatingPoint>(_ fast: [F], _ reference: [R]) -> Double {
        guard fast.count == reference.count else { return .infinity }
        var worst = 0.0
        for (a, b) in zip(fast, reference) {
            let (x, y) = (Double(a), Double(b))
            if x.isNaN || y.isNaN { return .infinity }
            if x.isInfinite || y.isInfinite { if x != y { return .infinity }; continue }
            worst = max(worst, abs(x - y) / max(1, abs(y)))
        }
        return worst
    }

    /// `count` values uniform in [−scale, scale) from `seed` (SplitMix64): the same on every machine.
    static func randoms(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15
        return (0..<count).map { _ in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return (Float(z >> 40) / Float(1 << 24) * 2 - 1) * scale
        }
    }

    static func outcome(_ name: String, _ fast: [Float], _ reference: [Double], tolerance: Double = tolerance) -> Outcome {
        Outcome(name: name, error: error(fast, reference), tolerance: tolerance)
    }

    // MARK: Products

    /// GEMM with every transpose on a prime shape and on one large enough to be split over threads
    /// (with the process's `kernels.gemm`, Tessera's kernel of every other instruction set this
    /// CPU runs on one thread, and OpenBLAS when the process runs Tessera's), and the linear
    /// layer's forward and backward (dx, dW).
    static func products(_ threads: KernelThreads) -> [Outcome] {
        var out: [Outcome] = []
        let others = TesseraGemm.ISA.available(on: CPUInfo.current.features)
            .filter { Matmul.implementation != .tessera || $0 != TesseraGemm.isa }
        for (m, n, k) in [(37, 29, 53), (257, 131, 257)] {   // the second is split over 2 threads (Matmul.minimumWorkPerThread)
            let a = randoms(m * k, seed: 1), b = randoms(k * n, seed: 2)
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let want = Reference.matmul(a.map(Double.init), b.map(Double.init), m: m, n: n, k: k, transposeA: ta, transposeB: tb)
                let name = "\(m)x\(n)x\(k)\(ta ? " Aᵀ" : "")\(tb ? " Bᵀ" : "")"
                var c = [Float](repeating: .nan, count: m * n)
                Matmul.gemm(transposeA: ta, transposeB: tb, m: m, n: n, k: k, a: a, lda: ta ? m : k, b: b, ldb: tb ? k : n,
                            c: &c, ldc: n, threads: threads)
                out.append(outcome("matmul (\(Matmul.implementationDescription)) \(name)", c, want))
                for isa in others {
                    c.withUnsafeMutableBufferPointer { c in
                        TesseraGemm.gemm(isa: isa, transposeA: ta, transposeB: tb, m: m, n: n, k: k, alpha: 1, a: a, lda: ta ? m : k,
                                         b: b, ldb: tb ? k : n, beta: 0, c: c.baseAddress!, ldc: n)
                    }
                    out.append(outcome("matmul (tessera \(isa.rawValue) kernel) \(name)", c, want))
                }
                if Matmul.implementation != .openblas {   // OpenBLAS's core is checked whichever GEMM the process runs
                    Matmul.gemm(transposeA: ta, transposeB: tb, m: m, n: n, k: k, a: a, lda: ta ? m : k, b: b, ldb: tb ? k : n,
                                c: &c, ldc: n, threads: threads, implementation: .openblas)
                    out.append(outcome("matmul (openblas, \(BLASLibrary.coreName) core) \(name)", c, want))
                }
            }
        }
        let (rows, inputs, outputs) = (45, 67, 33)
        let x = randoms(rows * inputs, seed: 3), w = randoms(outputs * inputs, seed: 4), dy = randoms(rows * outputs, seed: 5)
        var y = [Float](repeating: .nan, count: rows * outputs)
        Matmul.linearForward(x: x, weight: w, y: &y, rows: rows, inFeatures: inputs, outFeatures: outputs, threads: threads)
        var dx = [Float](repeating: .nan, count: rows * inputs), dw = [Float](repeating: 0, count: outputs * inputs)
        Matmul.linearBackward(x: x, weight: w, dy: dy, dx: &dx, dWeight: &dw, rows: rows, inFeatures: inputs, outFeatures: outputs, threads: threads)
        let (xd, wd, dyd) = (x.map(Double.init), w.map(Double.init), dy.map(Double.init))
        return out + [
            outcome("linear forward \(rows)x\(inputs)->\(outputs)", y, Reference.linear(xd, wd, rows: rows, inFeatures: inputs, outFeatures: outputs)),
            outcome("linear backward dx", dx, Reference.matmul(dyd, wd, m: rows, n: inputs, k: outputs)),
            outcome("linear backward dW", dw, Reference.matmul(dyd, xd, m: outputs, n: inputs, k: rows, transposeA: true)),
        ]
    }

    // MARK: Elementwise

    static func elementwise(_ threads: KernelThreads) -> [Outcome] {
        var out: [Outcome] = []
        let (rows, dim) = (5, 129)
        let x = randoms(rows * dim, seed: 11), w = randoms(dim, seed: 12)
        var y = [Float](repeating: .nan, count: x.count), rstd = [Float](repeating: .nan, count: rows)
        RMSNorm.forward(x: x, weight: w, y: &y, rstd: &rstd, rows: rows, dim: dim, eps: 1e-5, threads: threads)
        out.append(outcome("rmsnorm \(rows)x\(dim)", y, Reference.rmsNorm(x.map(Double.init), w.map(Double.init), rows: rows, dim: dim, eps: 1e-5)))

        let (batch, length, heads, headDim) = (2, 7, 3, 10)
        let positions = (0..<length).map { $0 * 3 + 5 }
        let r = randoms(batch * length * heads * headDim, seed: 21)
        let tables = RoPE.tables(positions: positions, headDim: headDim, theta: 10_000)
        var rotated = r
        RoPE.apply(&rotated, batch: batch, length: length, heads: heads, headDim: headDim, cos: tables.cos, sin: tables.sin, threads: threads)
        out.append(outcome("rope B\(batch) T\(length) H\(heads) D\(headDim)", rotated,
                           Reference.rope(r.map(Double.init), batch: batch, length: length, heads: heads, headDim: headDim,
                                          positions: positions, theta: 10_000)))

        let count = 301
        let gate = randoms(count, seed: 31, scale: 3), up = randoms(count, seed: 32)
        var h = [Float](repeating: .nan, count: count)
        SwiGLU.forward(gate: gate, up: up, out: &h, count: count, threads: threads)
        out.append(outcome("swiglu \(count)", h, Reference.swiglu(gate: gate.map(Double.init), up: up.map(Double.init))))

        let (tokens, vocab) = (7, 257)
        var logits = randoms(tokens * vocab, seed: 41, scale: 4)
        logits[0] = 80   // large logits must not overflow
        let targets = (0..<tokens).map { ($0 * 7 + 3) % vocab }
        var d = [Float](repeating: .nan, count: logits.count)
        let total = SoftmaxCrossEntropy.forwardBackward(logits: logits, targets: targets.map(Int32.init), rows: tokens, vocab: vocab,
                                                        dLogits: &d, gradientScale: 0.5, threads: threads)
        let loss: Double = Reference.crossEntropy(logits.map(Double.init), targets: targets, vocab: vocab)
        out.append(Outcome(name: "cross-entropy loss \(tokens)x\(vocab)", error: error([total / Double(tokens)], [loss]), tolerance: tolerance))
        out.append(outcome("cross-entropy gradient", d, Reference.crossEntropyGradient(logits.map(Double.init), targets: targets, vocab: vocab, scale: 0.5)))

        let table = randoms(11 * 6, seed: 51), ids: [Int32] = [10, 0, 10, 3, 7]
        var embedded = [Float](repeating: .nan, count: ids.count * 6)
        Embedding.forward(tokens: ids, count: ids.count, table: table, dim: 6, out: &embedded)
        out.append(outcome("embedding", embedded, Reference.embedding(ids.map(Int.init), table: table.map(Double.init), dim: 6)))

        let xs = stride(from: -87.0, through: 88.0, by: 0.0137).map { Float($0) } + [0, 1e-8, 3]
        var e = [Float](repeating: .nan, count: xs.count)
        VectorMath.exp(xs, &e, count: xs.count)
        let relative = zip(xs, e).map { x, y in abs(Double(y) - Foundation.exp(Double(x))) / Foundation.exp(Double(x)) }.max() ?? .nan
        out.append(Outcome(name: "vector exp over [-87, 88] (relative)", error: relative, tolerance: 3e-7))
        return out
    }

    // MARK: Optimizer

    /// Three AdamW steps on a length with a vector body and a tail, with weight decay.
    static func optimizer(_ threads: KernelThreads) -> [Outcome] {
        let count = 37
        let start = randoms(count, seed: 61), gradients = (0..<3).map { randoms(count, seed: 62 + UInt64($0)) }
        var p = start, m = [Float](repeating: 0, count: count), v = m
        let adam = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        for (index, g) in gradients.enumerated() {
            adam.update(parameters: &p, gradients: g, m: &m, v: &v, count: count, step: index + 1, learningRate: 0.01, decay: true,
                        threads: threads)
        }
        let want = Reference.adamW(start.map(Double.init), gradients: gradients.map { $0.map(Double.init) }, lr: 0.01,
                                   beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        return [outcome("adamw \(count) parameters, 3 steps", p, want, tolerance: optimizerTolerance)]
    }
}
