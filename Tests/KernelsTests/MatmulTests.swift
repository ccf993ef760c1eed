import Testing
import Kernels
import _TestSupport

@Suite struct MatmulTests {
    /// Awkward sizes: ones, primes, below, at and above typical BLAS tiles.
    static let shapes: [(Int, Int, Int)] = [(1, 1, 1), (7, 13, 5), (3, 1, 17), (64, 64, 64), (65, 31, 129), (130, 67, 3)]

    @Test(arguments: shapes)
    func gemmMatchesReferenceInEveryTransposeCase(shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        for transposeA in [false, true] {
            for transposeB in [false, true] {
                let a = Fixtures.randoms(m * k, seed: 1), b = Fixtures.randoms(k * n, seed: 2)
                var c = [Float](repeating: 0, count: m * n)
                Matmul.gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k,
                            a: a, lda: transposeA ? m : k, b: b, ldb: transposeB ? k : n, c: &c, ldc: n)
                let want = Reference.matmul(a.doubles, b.doubles, m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB)
                #expect(maxRelativeError(c, want) < 1e-5, "m=\(m) n=\(n) k=\(k) tA=\(transposeA) tB=\(transposeB)")
            }
        }
    }

    @Test func gemmWithEmptyInnerDimensionScalesC() {
        var c: [Float] = [1, 2, 3, 4]
        Matmul.gemm(transposeA: false, transposeB: false, m: 2, n: 2, k: 0, a: [], lda: 1, b: [], ldb: 2, beta: 0.5, c: &c, ldc: 2)
        #expect(c == [0.5, 1, 1.5, 2])
    }

    @Test(arguments: [(1, 1, 1), (5, 3, 7), (9, 17, 4)])
    func linearBackwardMatchesFiniteDifferences(shape: (Int, Int, Int)) {
        let (rows, inF, outF) = shape
        let x = Fixtures.randoms(rows * inF, seed: 3), w = Fixtures.randoms(outF * inF, seed: 4)
        let probe = Fixtures.randoms(rows * outF, seed: 5).doubles
        var dx = [Float](repeating: 0, count: x.count), dw = [Float](repeating: 0, count: w.count)
        Matmul.linearBackward(x: x, weight: w, dy: probe.floats, dx: &dx, dWeight: &dw, rows: rows, inFeatures: inF, outFeatures: outF)
        let numericX = GradientCheck.numeric(at: x.doubles) {
            GradientCheck.dot(Reference.linear($0, w.doubles, rows: rows, inFeatures: inF, outFeatures: outF), probe)
        }
        let numericW = GradientCheck.numeric(at: w.doubles) {
            GradientCheck.dot(Reference.linear(x.doubles, $0, rows: rows, inFeatures: inF, outFeatures: outF), probe)
        }
        #expect(GradientCheck.relativeError(dx, numericX) < 1e-5)
        #expect(GradientCheck.relativeError(dw, numericW) < 1e-5)
    }

    @Test func linearBackwardAccumulatesWeightGradients() {
        let x: [Float] = [1, 2], w: [Float] = [3, 4], dy: [Float] = [1]
        var dw: [Float] = [10, 10]
        Matmul.linearBackward(x: x, weight: w, dy: dy, dx: nil, dWeight: &dw, rows: 1, inFeatures: 2, outFeatures: 1)
        #expect(dw == [11, 12])
    }
}
