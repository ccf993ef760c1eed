import Testing
import Kernels
import _TestSupport

@Suite struct ElementwiseTests {
    @Test(arguments: [(1, 1), (3, 7), (4, 45), (5, 64), (2, 129)])
    func rmsNormForwardAndBackward(shape: (Int, Int)) {
        let (rows, dim) = shape
        let x = Fixtures.randoms(rows * dim, seed: 11), w = Fixtures.randoms(dim, seed: 12)
        var y = [Float](repeating: 0, count: x.count), rstd = [Float](repeating: 0, count: rows)
        RMSNorm.forward(x: x, weight: w, y: &y, rstd: &rstd, rows: rows, dim: dim, eps: 1e-5)
        #expect(maxRelativeError(y, Reference.rmsNorm(x.doubles, w.doubles, rows: rows, dim: dim, eps: 1e-5)) < 1e-5)

        let probe = Fixtures.randoms(x.count, seed: 13).doubles
        var dx = [Float](repeating: 0, count: x.count), dw = [Float](repeating: 0, count: dim)
        RMSNorm.backward(x: x, weight: w, rstd: rstd, dy: probe.floats, dx: &dx, dWeight: &dw, rows: rows, dim: dim)
        let numericX = GradientCheck.numeric(at: x.doubles) { GradientCheck.dot(Reference.rmsNorm($0, w.doubles, rows: rows, dim: dim, eps: 1e-5), probe) }
        let numericW = GradientCheck.numeric(at: w.doubles) { GradientCheck.dot(Reference.rmsNorm(x.doubles, $0, rows: rows, dim: dim, eps: 1e-5), probe) }
        #expect(GradientCheck.relativeError(dx, numericX) < 1e-4)
        #expect(GradientCheck.relativeError(dw, numericW) < 1e-4)
    }

    @Test(arguments: [(1, 1, 2), (2, 3, 8), (1, 5, 6)])
    func ropeForwardAndBackward(shape: (Int, Int, Int)) {
        let (length, heads, headDim) = shape
        let batch = 2
        let positions = (0..<length).map { $0 * 3 + 5 }   // global positions, not 0-based
        let x = Fixtures.randoms(batch * length * heads * headDim, seed: 21)
        let tables = RoPE.tables(positions: positions, headDim: headDim, theta: 10_000)
        var y = x
        RoPE.apply(&y, batch: batch, length: length, heads: heads, headDim: headDim, cos: tables.cos, sin: tables.sin)
        let reference = Reference.rope(x.doubles, batch: batch, length: length, heads: heads, headDim: headDim, positions: positions, theta: 10_000)
        #expect(maxRelativeError(y, reference) < 1e-5)

        let probe = Fixtures.randoms(x.count, seed: 22).doubles
        var dx = probe.floats
        RoPE.apply(&dx, batch: batch, length: length, heads: heads, headDim: headDim, cos: tables.cos, sin: tables.sin, inverse: true)
        let numeric = GradientCheck.numeric(at: x.doubles) {
            GradientCheck.dot(Reference.rope($0, batch: batch, length: length, heads: heads, headDim: headDim, positions: positions, theta: 10_000), probe)
        }
        #expect(GradientCheck.relativeError(dx, numeric) < 1e-5)
    }

    @Test(arguments: [1, 7, 300])
    func swigluForwardAndBackward(count: Int) {
        let gate = Fixtures.randoms(count, seed: 31, scale: 3), up = Fixtures.randoms(count, seed: 32)
        var out = [Float](repeating: 0, count: count)
        SwiGLU.forward(gate: gate, up: up, out: &out, count: count)
        #expect(maxRelativeError(out, Reference.swiglu(gate: gate.doubles, up: up.doubles)) < 1e-5)
        let probe = Fixtures.randoms(count, seed: 33).doubles
        var dGate = [Float](repeating: 0, count: count), dUp = dGate
        SwiGLU.backward(gate: gate, up: up, dOut: probe.floats, dGate: &dGate, dUp: &dUp, count: count)
        let numericGate = GradientCheck.numeric(at: gate.doubles) { GradientCheck.dot(Reference.swiglu(gate: $0, up: up.doubles), probe) }
        let numericUp = GradientCheck.numeric(at: up.doubles) { GradientCheck.dot(Reference.swiglu(gate: gate.doubles, up: $0), probe) }
        #expect(GradientCheck.relativeError(dGate, numericGate) < 1e-4)
        #expect(GradientCheck.relativeError(dUp, numericUp) < 1e-4)
    }

    @Test(arguments: [(1, 2), (5, 7), (3, 256)])
    func crossEntropyForwardAndBackward(shape: (Int, Int)) {
        let (rows, vocab) = shape
        var logits = Fixtures.randoms(rows * vocab, seed: 41, scale: 4)
        logits[0] = 80   // large logits must not overflow
        let targets = (0..<rows).map { Int32(($0 * 7 + 3) % vocab) }
        var d = [Float](repeating: 0, count: logits.count)
        let total = SoftmaxCrossEntropy.forwardBackward(logits: logits, targets: targets, rows: rows, vocab: vocab,
                                                        dLogits: &d, gradientScale: 1 / Float(rows))
        let reference = Reference.crossEntropy(logits.doubles, targets: targets.map(Int.init), vocab: vocab) as Double
        #expect(abs(total / Double(rows) - reference) < 1e-5 * max(1, reference))
        let numeric = GradientCheck.numeric(at: logits.doubles) { Reference.crossEntropy($0, targets: targets.map(Int.init), vocab: vocab) }
        #expect(GradientCheck.relativeError(d, numeric) < 1e-4)
        // In place (gradient written over the logits) gives the same gradient.
        var inPlace = logits
        inPlace.withUnsafeMutableBufferPointer { buffer in
            _ = SoftmaxCrossEntropy.forwardBackward(logits: buffer.baseAddress!, targets: targets, rows: rows, vocab: vocab,
                                                    dLogits: buffer.baseAddress!, gradientScale: 1 / Float(rows))
        }
        #expect(inPlace == d)
    }

    @Test func embeddingForwardAndBackward() {
        let table = Fixtures.randoms(5 * 3, seed: 51)
        let tokens: [Int32] = [4, 0, 4, 2]
        var out = [Float](repeating: 0, count: 4 * 3)
        Embedding.forward(tokens: tokens, count: 4, table: table, dim: 3, out: &out)
        #expect(Array(out[0..<3]) == Array(table[12..<15]) && Array(out[3..<6]) == Array(table[0..<3]))
        #expect(out == Reference.embedding(tokens.map(Int.init), table: table, dim: 3))
        let probe = Fixtures.randoms(12, seed: 52).doubles
        var dTable = [Float](repeating: 0, count: 15)
        Embedding.backward(tokens: tokens, count: 4, dOut: probe.floats, dim: 3, dTable: &dTable)
        let numeric = GradientCheck.numeric(at: table.doubles) { t in
            GradientCheck.dot(Reference.embedding(tokens.map(Int.init), table: t, dim: 3), probe)
        }
        #expect(GradientCheck.relativeError(dTable, numeric) < 1e-6)
    }
}
