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

    /// Sizes above every split threshold, so the 2-thread run really takes the parallel paths
    /// (row-split RMSNorm and cross-entropy, chunked SwiGLU and AdamW, block-split GEMMs,
    /// attention over heads).
    @Test func kernelsGiveTheSameBitsOnOneAndTwoThreads() {
        func run(threads count: Int) -> [[Float]] {
            let threads = KernelThreads(count)
            let (rows, dim) = (1000, 96)
            let x = Fixtures.randoms(rows * dim, seed: 1), w = Fixtures.randoms(dim, seed: 2)
            var y = [Float](repeating: 0, count: x.count), rstd = [Float](repeating: 0, count: rows)
            RMSNorm.forward(x: x, weight: w, y: &y, rstd: &rstd, rows: rows, dim: dim, eps: 1e-5, threads: threads)
            var dx = [Float](repeating: 0, count: x.count), dw = [Float](repeating: 0, count: dim)
            RMSNorm.backward(x: x, weight: w, rstd: rstd, dy: y, dx: &dx, dWeight: &dw, rows: rows, dim: dim, threads: threads)
            var h = [Float](repeating: 0, count: x.count), dg = h, du = h
            SwiGLU.forward(gate: x, up: y, out: &h, count: x.count, threads: threads)
            SwiGLU.backward(gate: x, up: y, dOut: dx, dGate: &dg, dUp: &du, count: x.count, threads: threads)
            var d = [Float](repeating: 0, count: x.count)
            let targets = (0..<rows).map { Int32($0 % dim) }
            let loss = SoftmaxCrossEntropy.forwardBackward(logits: x, targets: targets, rows: rows, vocab: dim, dLogits: &d, gradientScale: 0.01, threads: threads)
            let square = Fixtures.randoms(dim * dim, seed: 6)
            var product = [Float](repeating: 0, count: rows * dim), wide = [Float](repeating: 0, count: dim * rows)
            Matmul.linearForward(x: x, weight: square, y: &product, rows: rows, inFeatures: dim, outFeatures: dim, threads: threads)   // split by rows
            Matmul.gemm(transposeA: true, transposeB: false, m: dim, n: rows, k: dim, a: square, lda: dim, b: y, ldb: rows,
                        c: &wide, ldc: rows, threads: threads)                                                 // split by columns
            var p = Fixtures.randoms(200_000, seed: 7), m = [Float](repeating: 0, count: p.count), v = m
            AdamW().update(parameters: &p, gradients: Fixtures.randoms(p.count, seed: 8), m: &m, v: &v, count: p.count,
                           step: 1, learningRate: 0.01, decay: true, threads: threads)
            let attention = CausalAttention(batch: 2, length: 70, heads: 4, kvHeads: 2, headDim: 8)
            let q = Fixtures.randoms(2 * 70 * 32, seed: 3), k = Fixtures.randoms(2 * 70 * 16, seed: 4), vv = Fixtures.randoms(2 * 70 * 16, seed: 5)
            var o = [Float](repeating: 0, count: q.count), probabilities = [Float](repeating: 0, count: attention.probabilityCount)
            attention.forward(q: q, k: k, v: vv, o: &o, probabilities: &probabilities, threads: threads)
            var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count), dv = dk
            attention.backward(q: q, k: k, v: vv, o: o, probabilities: probabilities, dO: q, dq: &dq, dk: &dk, dv: &dv, threads: threads)
            return [y, rstd, dx, dw, h, dg, du, d, [Float(loss)], product, wide, p, m, v, o, dq, dk, dv]
        }
        let one = run(threads: 1), two = run(threads: 2)
        let names = ["rmsnorm y", "rstd", "rmsnorm dx", "rmsnorm dw", "swiglu h", "swiglu dgate", "swiglu dup", "cross-entropy dlogits",
                     "loss", "product split by rows", "product split by columns", "adamw p", "adamw m", "adamw v",
                     "attention o", "attention dq", "attention dk", "attention dv"]
        // Large products are cut into blocks over the threads; only kernels whose results do not
        // depend on a product's shape give the whole product's bits (Matmul.productsSplitExactly:
        // Tessera's GEMM, not OpenBLAS's Haswell and Zen kernels), so there the products agree within rounding.
        let splitProducts: Set = ["product split by rows", "product split by columns"]
        for (index, name) in names.enumerated() {
            if splitProducts.contains(name) && !Matmul.productsSplitExactly {
                #expect(maxRelativeError(one[index], two[index]) < 1e-5, "\(name) on \(BLASLibrary.coreName)")
                continue
            }
            let first = one[index].indices.first { one[index][$0].bitPattern != two[index][$0].bitPattern }
            #expect(first == nil, "\(name): element \(first ?? 0) differs (\(one[index][first ?? 0]) vs \(two[index][first ?? 0]))")
        }
        // The products above agree with the naive twin too (so both runs are right, not just equal).
        let x = Fixtures.randoms(1000 * 96, seed: 1), square = Fixtures.randoms(96 * 96, seed: 6)
        #expect(maxRelativeError(one[9], Reference.linear(x.doubles, square.doubles, rows: 1000, inFeatures: 96, outFeatures: 96)) < 1e-5)
    }
}
