import Foundation
import Testing
@testable import Kernels
import CBF16
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
/// relative error of the Float32 scores, exponentials and row sums (the forward's rescaling
/// by powers of two is exact). The Float32 error of a
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

    /// The reference forward of `kernel` (P = 2^(s · log2(e) − M) rounded to bf16 as the kernel's
    /// base-2 online softmax does, with any integer M), and its backward from the kernel's own L and D = rowsum(dO ⊙ O)
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
                    let rowError = sError.max() ?? 0, largest = s.filter { $0 > -.infinity }.map(abs).max() ?? 0
                    // Forward: P = 2^(t − M), t = s · log2(e), M = ⌈max t⌉ — the kernel's P up to
                    // exact powers of two (its running power), which P's bf16 rounding does not
                    // depend on. Relative error of a Float32 P: its score's, t's rounding
                    // (2⁻²⁴ |s|), the polynomial's (2⁻²⁰). Values below 2⁻¹²⁴ add under 1e-37.
                    let power = Foundation.ceil(s.max()! * 1.442_695_040_888_963_4)
                    var sum = 0.0, acc = [Double](repeating: 0, count: D), accAbs = acc, doubt = acc
                    for j in 0..<Tk where s[j] > -.infinity {
                        let p = Foundation.exp2(s[j] * 1.442_695_040_888_963_4 - power)
                        guard p >= 0x1p-124 else { continue }
                        let rounded = bf16(p, within: p * (sError[j] + 2 * u * abs(s[j]) + 0x1p-20))
                        sum += p
                        let vj = ((b * Tk + j) * Hkv + kvh) * D
                        for d in 0..<D {
                            acc[d] += rounded.value * v[vj + d]; accAbs[d] += abs(rounded.value * v[vj + d])
                            doubt[d] += rounded.doubt * abs(v[vj + d])
                        }
                    }
                    let pError = rowError + 2 * u * largest + 0x1p-20, sumError = pError + Double(Tk + 3) * u
                    if sum == 0 { out.logsumexp[row] = -.infinity } else {
                        out.logsumexp[row] = power * 0.693_147_180_559_945_3 + Foundation.log(sum)
                        out.lBound[row] = 2 * sumError + 4 * u * (abs(out.logsumexp[row]) + 1 + Foundation.log(Double(Tk)))
                        for d in 0..<D {
                            out.o[qi + d] = acc[d] / sum
                            out.oBound[qi + d] = (Double(Tk + 4 * f.keyTiles + 4) * u * accAbs[d] + doubt[d] + pError * accAbs[d]) / sum
                                + sumError * abs(out.o[qi + d]) + 1e-30
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

    /// P's bf16 rounding does not depend on the running power the softmax takes it against:
    /// 2^(t − M) and 2^(t − M − 5) round to the same bf16 values but for the factor 2⁵ (what
    /// lets ring attention's chunks round P as one rank does); values below 2⁻¹²⁵ of 2^M
    /// and −∞ scores give 0.
    @Test func bf16ProbabilitiesRoundTheSameAgainstAnyPower() {
        var scores = Fixtures.randoms(1003, seed: 81, scale: 8)
        scores[5] = -.infinity; scores[17] = -200; scores[1002] = -.infinity
        let top = (scores.max()! * TileMath.log2e).rounded(.up)
        var (a, b) = (scores, scores)
        let sumA = TileMath.exponentiateInPowersOfTwo(&a, count: a.count, minus: top)
        let sumB = TileMath.exponentiateInPowersOfTwo(&b, count: b.count, minus: top + 5)
        #expect(sumA == sumB * 32 && sumA > 0.5)
        #expect(a.indices.allSatisfy { a[$0] == b[$0] * 32 && BF16.rounded(a[$0]) == BF16.rounded(b[$0]) * 32 })
        #expect(a[5] == 0 && a[17] == 0 && a[1002] == 0 && a.filter { $0 > 0 }.count == 1000 && a.allSatisfy { $0 <= 1 })
        let exact = scores.indices.map { scores[$0] < -100 ? 0 : Foundation.exp2(Double(scores[$0]) * 1.442_695_040_888_963_4 - Double(top)) }
        let far = a.indices.filter { abs(Double(a[$0]) - exact[$0]) > (1e-6 + 1.5e-7 * abs(Double(scores[$0]))) * exact[$0] }
        #expect(far.isEmpty, "2^(t − M) within Float32 of exp: \(far.prefix(3).map { (scores[$0], a[$0], exact[$0]) })")
    }

    /// What ring attention does: a query block's bf16 forward over its keys in one call, and
    /// over the same keys in two or three accumulating calls split anywhere, give o and L that
    /// differ only by Float32 roundings (P rounds the same way whatever the running maximum);
    /// the bound is a few times what the same splits change in the Float32 forward.
    @Test(arguments: FlashPanelsTests.cases)
    func bf16ForwardIsTheSameForAnySplitOfTheKeys(_ c: Case) {
        let f = c.kernel, x = c.inputs(), Tk = f.keyLength, width = f.kvHeads * f.headDim
        func forward(_ precision: ComputePrecision, cuts: [Int]) -> (o: [Float], l: [Float]) {
            var o = [Float](repeating: .nan, count: x.q.count), l = [Float](repeating: .nan, count: f.logsumexpCount)
            let bounds = [0] + cuts + [Tk]
            for (index, (start, end)) in zip(bounds, bounds.dropFirst()).enumerated() {
                let g = f.withKeys(Array(f.keyPositions[start..<end]))
                let part = { (a: [Float]) -> [Float] in (0..<f.batch).flatMap { (b: Int) -> ArraySlice<Float> in a[((b * Tk + start) * width)..<((b * Tk + end) * width)] } }
                g.forward(q: x.q, k: part(x.k), v: part(x.v), o: &o, logsumexp: &l, accumulate: index > 0, precision: precision)
            }
            return (o, l)
        }
        func difference(_ a: (o: [Float], l: [Float]), _ b: (o: [Float], l: [Float])) -> Double {
            let scale = b.o.map { abs(Double($0)) }.max()!
            var o = 0.0
            for (x, y) in zip(a.o, b.o) { o = max(o, abs(Double(x) - Double(y)) / max(scale, 1e-30)) }
            var l = 0.0
            for (x, y) in zip(a.l, b.l) where x != y { l = max(l, abs(Double(x) - Double(y)) / max(1, abs(Double(y)))) }
            return max(o, l)
        }
        let splits = [[Tk / 2], [Tk / 3, Tk * 3 / 4], [1, Tk - 1]].map { Array(Set($0.filter { $0 > 0 && $0 < Tk })).sorted() }
        let (whole, whole32) = (forward(.bf16, cuts: []), forward(.fp32, cuts: []))
        for cuts in splits where !cuts.isEmpty {
            let (bf16, fp32) = (difference(forward(.bf16, cuts: cuts), whole), difference(forward(.fp32, cuts: cuts), whole32))
            #expect(bf16 <= max(4 * fp32, 1e-6), "\(c.testDescription), keys cut at \(cuts): bf16 differs by \(bf16), Float32 by \(fp32)")
        }
    }

    /// Head dims past one packed depth take `BF16Matmul.gemm` (rounding the same operands).
    @Test func wideHeadsTakeTheBF16Gemm() {
        let depth = Int(TESSERA_BF16_MAX_DEPTH)
        #expect(FlashPanels.available(headDim: depth + 1, queryTile: 128, keyTile: 256, precision: .bf16) == nil)
        #expect(FlashPanels.available(headDim: depth, queryTile: 128, keyTile: 256, precision: .bf16)?.isBF16 == true)
        let c = Case(queries: 5, keys: 9, headDim: depth + 8, causal: true, heads: 2, kvHeads: 1, queryTile: 4, keyTile: 4)
        let f = c.kernel, x = c.inputs()
        let got = FlashPanelsTests.run(f, x, threads: 1, accumulate: false, precision: .bf16)
        var rowDot = [Float](repeating: 0, count: f.logsumexpCount)
        FlashAttention.rowDot(o: got[0], dO: x.dO, into: &rowDot, batch: f.batch, length: f.queryLength, heads: f.heads, headDim: f.headDim)
        let want = Self.reference(f, x, logsumexp: got[1], rowDot: rowDot)
        #expect(Self.outside(got[0], want.o, want.oBound).isEmpty && Self.outside(got[2], want.dq, want.dqBound).isEmpty
                && Self.outside(got[3], want.dk, want.dkBound).isEmpty && Self.outside(got[4], want.dv, want.dvBound).isEmpty)
    }
}
