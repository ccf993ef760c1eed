import Testing
import Foundation
import Kernels
import _TestSupport

@Suite(.serialized) struct VectorMathTests {
    @Test func vectorExpMatchesFoundationOverTheFloatRange() {
        var xs: [Float] = stride(from: -87.0, through: 88.0, by: 0.0137).map { Float($0) }
        xs += [0, -0, 1e-8, -1e-8, 0.5, -0.5, 0.693147, 1, 3]   // odd count: exercises the tail
        var out = [Float](repeating: 0, count: xs.count)
        VectorMath.exp(xs, &out, count: xs.count)
        var worst = 0.0
        for (x, y) in zip(xs, out) {
            let want = Foundation.exp(Double(x))
            worst = max(worst, abs(Double(y) - want) / want)
        }
        #expect(worst < 3e-7, "worst relative error \(worst)")
    }

    @Test func kernelsGiveTheSameBitsOnOneAndTwoThreads() {
        func run(threads: Int) -> [[Float]] {
            let saved = Matmul.threads
            Matmul.threads = threads
            defer { Matmul.threads = saved }
            let (rows, dim) = (300, 96)
            let x = Fixtures.randoms(rows * dim, seed: 1), w = Fixtures.randoms(dim, seed: 2)
            var y = [Float](repeating: 0, count: x.count), rstd = [Float](repeating: 0, count: rows)
            RMSNorm.forward(x: x, weight: w, y: &y, rstd: &rstd, rows: rows, dim: dim, eps: 1e-5)
            var dx = [Float](repeating: 0, count: x.count), dw = [Float](repeating: 0, count: dim)
            RMSNorm.backward(x: x, weight: w, rstd: rstd, dy: y, dx: &dx, dWeight: &dw, rows: rows, dim: dim)
            var h = [Float](repeating: 0, count: x.count), dg = h, du = h
            SwiGLU.forward(gate: x, up: y, out: &h, count: x.count)
            SwiGLU.backward(gate: x, up: y, dOut: dx, dGate: &dg, dUp: &du, count: x.count)
            var d = [Float](repeating: 0, count: x.count)
            let targets = (0..<rows).map { Int32($0 % dim) }
            let loss = SoftmaxCrossEntropy.forwardBackward(logits: x, targets: targets, rows: rows, vocab: dim, dLogits: &d, gradientScale: 0.01)
            let attention = CausalAttention(batch: 2, length: 70, heads: 4, kvHeads: 2, headDim: 8)
            let q = Fixtures.randoms(2 * 70 * 32, seed: 3), k = Fixtures.randoms(2 * 70 * 16, seed: 4), v = Fixtures.randoms(2 * 70 * 16, seed: 5)
            var o = [Float](repeating: 0, count: q.count), p = [Float](repeating: 0, count: attention.probabilityCount)
            attention.forward(q: q, k: k, v: v, o: &o, probabilities: &p)
            var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count), dv = dk
            attention.backward(q: q, k: k, v: v, o: o, probabilities: p, dO: q, dq: &dq, dk: &dk, dv: &dv)
            return [y, rstd, dx, dw, h, dg, du, d, [Float(loss)], o, dq, dk, dv]
        }
        #expect(run(threads: 1) == run(threads: 2))
    }
}
