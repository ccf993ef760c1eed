import Foundation
import Testing
@testable import Kernels
import _TestSupport

/// Flash attention in bf16 (`precision: .bf16`, `train.precision: bf16`) against a Float64
/// reference computed on the bf16-rounded Q, K, V, dO that rounds P and dS where they enter a
/// product, on the awkward shapes of `FlashPanelsTests`; bits equal for 1, 2 and 3 threads,
/// ring attention's accumulating calls included. Run again with TESSERA_BF16_KERNEL=portable
/// for the emulation (same bits, so the same bounds hold).
///
/// The bound of each output element: the Float32 accumulation of exact bf16 products,
/// (terms + 4 · products + 4) · 2⁻²⁴ · Σ|terms|; plus, for every P or dS value within its own
/// Float32 error of a bf16 rounding midpoint (where the kernel's rounding and the reference's
/// may go different ways), one bf16 unit of it times its partner; plus, for o and L, the
/// relative error of the Float32 scores, exponentials and row sums. The Float32 error of a
/// score is taken as (D + 2) · 2⁻²⁴ · scale · Σ|q k| + 2⁻²³ |s|, of an exponential 2⁻²⁰.
@Suite struct FlashBF16Tests {
    typealias Case = FlashAttentionTests.Case
    typealias Inputs = (q: [Float], k: [Float], v: [Float], dO: [Float])

    /// x rounded to bf16 (nearest even) in Float64, and one bf16 unit where x lies within δ of
    /// a rounding midpoint (else 0). Values below the smallest normal count as 0 (the kernel
    /// reads bf16 denormals as zero).
    static func bf16(_ x: Double, within δ: Double) -> (value: Double, doubt: Double) {
        let a = abs(x)
        guard a >= 0x1p-126 else { return (0, a + δ >= 0x1p-126 ? 0x1p-126 : 0) }
        let unit = Foundation.pow(2, Foundation.floor(Foundation.log2(a + δ)) - 7)
        let value = (a / unit).rounded(.toNearestOrEven) * unit * (x < 0 ? -1 : 1)
        let middle = (Foundation.floor(a / unit) + 0.5) * unit
        return (value, abs(a - middle) <= δ ? unit : 0)
    }

    struct Reference {
        var o: [Double], oBound: [Double], logsumexp: [Double], lBound: [Double]
        var dq: [Double], dqBound: [Double], dk: [Double], dkBound: [Double], dv: [Double], dvBound: [Double]
    }

    /// The reference forward of `kernel` (P rounded against the running max of each key tile,
    /// as the online softmax does), and its backward from the kernel's own L and D = rowsum(dO ⊙ O)
    /// (`logsumexp`, `rowDot`: Float32 inputs of the backward pass).
    static func reference(_ f: FlashAttention, _ x: Inputs, logsumexp: [Float], rowDot: [Float]) -> Reference {
        let r = { (a: [Float]) in a.map { Double(BF16.rounded($0)) } }
        let (q, k, v, dO) = (r(x.q), r(x.k), r(x.v), r(x.dO))
        let (D, Hq, Hkv, Tq, Tk, g) = (f.headDim, f.heads, f.kvHeads, f.queryLength, f.keyLength, f.heads / f.kvHeads)
        let scale = Double(f.scale), u = 0x1p-24
        var out = Reference(o: .init(repeating: 0, count: x.q.count), oBound: .init(repeating: 0, count: x.q.count),
                            logsumexp: .init(repeating: 0, count: f.logsumexpCount), lBound: .init(repeating: 0, count: f.logsumexpCount),
                            dq: .init(repeating: 0, count: x.q.count), dqBound: .init(repeating: 0, count: x.q.count),
                            dk: .init(repeating: 0, count: x.k.count), dkBound: .init(repeating: 0, count: x.k.count),
                            dv: .init(repeating: 0, count: x.k.count), dvBound: .init(repeating: 0, count: x.k.count))
        var (dqAbs, dkAbs, dvAbs) = (out.dq, out.dk, out.dv)
        for b in 0..<f.batch {
            for h in 0..<Hq {
                let kvh = h / g
                for i in 0..<Tq {
                    let qi = ((b * Tq + i) * Hq + h) * D, row = (b * Hq + h) * Tq + i
                    // Scores of the visible keys and their Float32 error.
                    var s = [Double](repeating: -.infinity, count: Tk), sError = [Double](repeating: 0, count: Tk)
                    for j in 0..<Tk where !f.causal || f.keyPositions[j] <= f.queryPositions[i] {
                        let kj = ((b * Tk + j) * Hkv + kvh) * D
                        var (dot, magnitude) = (0.0, 0.0)
                        for d in 0..<D { dot += q[qi + d] * k[kj + d]; magnitude += abs(q[qi + d] * k[kj + d]) }
                        s[j] = scale * dot
                        sError[j] = Double(D + 2) * u * scale * magnitude + 2 * u * abs(s[j])
                    }
                    let rowError = sError.max() ?? 0
                    // Forward: the online softmax by key tiles.
                    var (m, sum) = (-Double.infinity, 0.0)
                    var acc = [Double](repeating: 0, count: D), accAbs = acc, doubt = acc
                    for t in 0..<f.keyTiles {
                        let columns = f.keyColumns(t)
                        let tileMax = columns.map { s[$0] }.max()!
                        let newMax = max(m, tileMax)
                        if newMax == -.infinity { continue }
                        let rescale = m == -.infinity ? 0 : Foundation.exp(m - newMax)
                        for d in 0..<D { acc[d] *= rescale; accAbs[d] *= rescale; doubt[d] *= rescale }
                        sum *= rescale
                        for j in columns where s[j] > -.infinity {
                            let p = Foundation.exp(s[j] - newMax)
                            let rounded = bf16(p, within: p * (sError[j] + rowError + 0x1p-20))
                            sum += p
                            let vj = ((b * Tk + j) * Hkv + kvh) * D
                            for d in 0..<D {
                                acc[d] += rounded.value * v[vj + d]; accAbs[d] += abs(rounded.value * v[vj + d])
                                doubt[d] += rounded.doubt * abs(v[vj + d])
                            }
                        }
                        m = newMax
                    }
                    let relative = Double(f.keyTiles) * (4 * rowError + 0x1p-19) + Double(Tk + 3) * u
                    if sum == 0 { out.logsumexp[row] = -.infinity } else {
                        out.logsumexp[row] = m + Foundation.log(sum)
                        out.lBound[row] = 4 * rowError + Double(Tk + 3) * u + 2 * u * abs(out.logsumexp[row])
                        for d in 0..<D {
                            out.o[qi + d] = acc[d] / sum
                            out.oBound[qi + d] = (Double(Tk + 4 * f.keyTiles + 4) * u * accAbs[d] + doubt[d]) / sum
                                + relative * abs(out.o[qi + d]) + 1e-30
                        }
                    }
                    // Backward: P = exp(S − L) from the kernel's L.
                    let total = Double(logsumexp[row])
                    guard total > -.infinity else { continue }
                    for j in 0..<Tk where s[j] > -.infinity {
                        let kj = ((b * Tk + j) * Hkv + kvh) * D
                        let p = Foundation.exp(s[j] - total), pError = p * (sError[j] + 0x1p-20)
                        let pRounded = bf16(p, within: pError)
                        var (dP, magnitude) = (0.0, 0.0)
                        for d in 0..<D { dP += dO[qi + d] * v[kj + d]; magnitude += abs(dO[qi + d] * v[kj + d]) }
                        let centred = dP - Double(rowDot[row])
                        let dS = p * centred
                        let dSError = pError * abs(centred) + p * (Double(D + 2) * u * magnitude + 2 * u * abs(centred)) + 2 * u * abs(dS)
                        let dSRounded = bf16(dS, within: dSError)
                        for d in 0..<D {
                            out.dv[kj + d] += pRounded.value * dO[qi + d]; dvAbs[kj + d] += abs(pRounded.value * dO[qi + d])
                            out.dvBound[kj + d] += pRounded.doubt * abs(dO[qi + d])
                            out.dk[kj + d] += scale * dSRounded.value * q[qi + d]; dkAbs[kj + d] += abs(scale * dSRounded.value * q[qi + d])
                            out.dkBound[kj + d] += scale * dSRounded.doubt * abs(q[qi + d])
                            out.dq[qi + d] += scale * dSRounded.value * k[kj + d]; dqAbs[qi + d] += abs(scale * dSRounded.value * k[kj + d])
                            out.dqBound[qi + d] += scale * dSRounded.doubt * abs(k[kj + d])
                        }
                    }
                }
            }
        }
        let keyTerms = Double(g * Tq + 4 * g * f.queryTiles + 4) * u, queryTerms = Double(Tk + 4 * f.keyTiles + 4) * u
        for e in out.dq.indices { out.dqBound[e] += queryTerms * dqAbs[e] + 1e-30 }
        for e in out.dk.indices { out.dkBound[e] += keyTerms * dkAbs[e] + 1e-30; out.dvBound[e] += keyTerms * dvAbs[e] + 1e-30 }
        return out
    }

    /// (index, |got − want|, bound) of the elements outside their bound.
    static func outside(_ got: [Float], _ want: [Double], _ bound: [Double]) -> [(Int, Double, Double)] {
        got.indices.compactMap { e in
            let (a, w) = (Double(got[e]), want[e])
            if a == w { return nil }   // equal infinities (L of a row that sees nothing)
            let error = abs(a - w)
            return error <= bound[e] ? nil : (e, error, bound[e])
        }
    }

    @Test(arguments: FlashPanelsTests.cases)
    func bf16FlashMatchesTheFloat64ReferenceOfRoundedOperands(_ c: Case) {
        let f = c.kernel, x = c.inputs()
        let got = FlashPanelsTests.run(f, x, threads: 1, accumulate: false, precision: .bf16)
        var rowDot = [Float](repeating: 0, count: f.logsumexpCount)
        FlashAttention.rowDot(o: got[0], dO: x.dO, into: &rowDot, batch: f.batch, length: f.queryLength, heads: f.heads, headDim: f.headDim)
        let want = Self.reference(f, x, logsumexp: got[1], rowDot: rowDot)
        let checks: [(String, [Float], [Double], [Double])] = [("o", got[0], want.o, want.oBound), ("logsumexp", got[1], want.logsumexp, want.lBound),
                                                                ("dq", got[2], want.dq, want.dqBound), ("dk", got[3], want.dk, want.dkBound),
                                                                ("dv", got[4], want.dv, want.dvBound)]
        for (name, g, w, bound) in checks {
            let bad = Self.outside(g, w, bound)
            #expect(bad.isEmpty, "\(c.testDescription): \(bad.count) of \(g.count) \(name) outside the bound, first \(bad.prefix(3))")
        }
        // Rounded where the reference rounds: Float32 flash is measurably further from it.
        let float32 = FlashPanelsTests.run(f, x, threads: 1, accumulate: false, precision: .fp32)
        let error = { (a: [Float]) in zip(a, want.dv).map { abs(Double($0) - $1) }.max() ?? 0 }
        #expect(got[4] != float32[4], "\(c.testDescription): bf16 dv has the Float32 bits")
        if c.queries * c.keys >= 1000 {
            #expect(error(float32[4]) > 4 * error(got[4]), "\(c.testDescription): Float32 dv \(error(float32[4])) is not further from the bf16 reference than bf16 dv \(error(got[4]))")
        }
    }

    @Test(arguments: FlashPanelsTests.cases)
    func bf16FlashGivesTheSameBitsOnAnyThreadCount(_ c: Case) {
        let f = c.kernel, x = c.inputs()
        for accumulate in [false, true] {
            let one = FlashPanelsTests.run(f, x, threads: 1, accumulate: accumulate, precision: .bf16)
            #expect(one.allSatisfy { $0.allSatisfy { !$0.isNaN } }, "\(c.testDescription): an output was not written")
            for threads in [2, 3] {
                let other = FlashPanelsTests.run(f, x, threads: threads, accumulate: accumulate, precision: .bf16)
                for (name, (a, b)) in zip(["o", "logsumexp", "dq", "dk", "dv"], zip(other, one)) {
                    #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "\(c.testDescription), \(threads) threads, accumulate \(accumulate): \(name) bits differ")
                }
            }
        }
    }

    /// Head dims past one packed depth take `BF16Matmul.gemm` (rounding the same operands).
    @Test func wideHeadsTakeTheBF16Gemm() {
        #expect(FlashPanels.available(headDim: 513, queryTile: 128, keyTile: 256, precision: .bf16) == nil)
        #expect(FlashPanels.available(headDim: 512, queryTile: 128, keyTile: 256, precision: .bf16)?.isBF16 == true)
        let c = Case(queries: 5, keys: 9, headDim: 520, causal: true, heads: 2, kvHeads: 1, queryTile: 4, keyTile: 4)
        let f = c.kernel, x = c.inputs()
        let got = FlashPanelsTests.run(f, x, threads: 1, accumulate: false, precision: .bf16)
        var rowDot = [Float](repeating: 0, count: f.logsumexpCount)
        FlashAttention.rowDot(o: got[0], dO: x.dO, into: &rowDot, batch: f.batch, length: f.queryLength, heads: f.heads, headDim: f.headDim)
        let want = Self.reference(f, x, logsumexp: got[1], rowDot: rowDot)
        #expect(Self.outside(got[0], want.o, want.oBound).isEmpty && Self.outside(got[2], want.dq, want.dqBound).isEmpty
                && Self.outside(got[3], want.dk, want.dkBound).isEmpty && Self.outside(got[4], want.dv, want.dvBound).isEmpty)
    }
}
