import Testing
import Kernels
import _TestSupport

@Suite struct AttentionTests {
    /// (length, heads, kvHeads, headDim): below, at and above the 64-row block, GQA and odd D.
    static let shapes: [(Int, Int, Int, Int)] = [(1, 1, 1, 4), (7, 4, 2, 5), (64, 2, 2, 8), (65, 4, 1, 3), (130, 2, 1, 16)]

    func run(_ shape: (Int, Int, Int, Int), batch: Int) -> (CausalAttention, q: [Float], k: [Float], v: [Float], o: [Float], p: [Float]) {
        let (length, heads, kvHeads, headDim) = shape
        let attention = CausalAttention(batch: batch, length: length, heads: heads, kvHeads: kvHeads, headDim: headDim)
        let q = Fixtures.randoms(batch * length * heads * headDim, seed: 61)
        let k = Fixtures.randoms(batch * length * kvHeads * headDim, seed: 62)
        let v = Fixtures.randoms(batch * length * kvHeads * headDim, seed: 63)
        var o = [Float](repeating: 0, count: q.count), p = [Float](repeating: 0, count: attention.probabilityCount)
        attention.forward(q: q, k: k, v: v, o: &o, probabilities: &p)
        return (attention, q, k, v, o, p)
    }

    @Test(arguments: shapes)
    func forwardMatchesNaiveAttention(shape: (Int, Int, Int, Int)) {
        let r = run(shape, batch: 2)
        let want = Reference.attention(q: r.q.doubles, k: r.k.doubles, v: r.v.doubles, batch: 2, length: shape.0,
                                       heads: shape.1, kvHeads: shape.2, headDim: shape.3)
        #expect(maxRelativeError(r.o, want) < 1e-5)
    }

    @Test(arguments: [(1, 1, 1, 4), (7, 4, 2, 5), (66, 2, 1, 3)])
    func backwardMatchesFiniteDifferences(shape: (Int, Int, Int, Int)) {
        let (length, heads, kvHeads, headDim) = shape
        let r = run(shape, batch: 1)
        let probe = Fixtures.randoms(r.o.count, seed: 64).doubles
        var dq = [Float](repeating: 0, count: r.q.count), dk = [Float](repeating: 0, count: r.k.count), dv = dk
        r.0.backward(q: r.q, k: r.k, v: r.v, o: r.o, probabilities: r.p, dO: probe.floats, dq: &dq, dk: &dk, dv: &dv)
        func loss(_ q: [Double], _ k: [Double], _ v: [Double]) -> Double {
            GradientCheck.dot(Reference.attention(q: q, k: k, v: v, batch: 1, length: length, heads: heads, kvHeads: kvHeads, headDim: headDim), probe)
        }
        let (q, k, v) = (r.q.doubles, r.k.doubles, r.v.doubles)
        #expect(GradientCheck.relativeError(dq, GradientCheck.numeric(at: q) { loss($0, k, v) }) < 1e-4)
        #expect(GradientCheck.relativeError(dk, GradientCheck.numeric(at: k) { loss(q, $0, v) }) < 1e-4)
        #expect(GradientCheck.relativeError(dv, GradientCheck.numeric(at: v) { loss(q, k, $0) }) < 1e-4)
    }
}
