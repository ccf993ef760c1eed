import Testing
import Kernels
import _TestSupport

/// The tiled flash kernel against its naive twin (`Reference.attention` with an
/// `AttentionShape`), in Float32 and as a Float64 reference: outputs, logsumexp and every
/// gradient; masking by positions; rows that see no key; huge scores; thread-count
/// independence; the merge that ring attention builds on.
@Suite struct FlashAttentionTests {
    /// One attention problem. `queryTile`/`keyTile` of 0 mean the kernel's defaults.
    struct Case: Sendable, CustomTestStringConvertible {
        var queries: Int, keys: Int, headDim: Int, causal: Bool
        var heads = 2, kvHeads = 2, batch = 1, queryTile = 0, keyTile = 0
        var queryPositions: [Int]? = nil, keyPositions: [Int]? = nil
        /// Whether the naive twins compute only `sampledRows` (for long shapes).
        var sample = false

        var testDescription: String {
            "Tq \(queries) Tk \(keys) D \(headDim) \(causal ? "causal" : "full") \(heads)/\(kvHeads) heads B \(batch)"
                + (queryTile > 0 ? " tiles \(queryTile)×\(keyTile)" : "")
        }

        var reference: Reference.AttentionShape {
            Reference.AttentionShape(batch: batch, queryLength: queries, keyLength: keys, heads: heads, kvHeads: kvHeads,
                                     headDim: headDim, causal: causal, queryPositions: queryPositions, keyPositions: keyPositions)
        }

        var kernel: FlashAttention {
            FlashAttention(batch: batch, queryLength: queries, keyLength: keys, heads: heads, kvHeads: kvHeads, headDim: headDim,
                           causal: causal, queryPositions: queryPositions, keyPositions: keyPositions,
                           queryTile: queryTile > 0 ? queryTile : FlashAttention.defaultQueryTile,
                           keyTile: keyTile > 0 ? keyTile : FlashAttention.defaultKeyTile)
        }

        var queryCount: Int { batch * queries * heads * headDim }
        var keyCount: Int { batch * keys * kvHeads * headDim }

        /// The query rows the naive twins compute when `sample` (every 7th, the first and last of
        /// every query tile, the last), or nil for all of them.
        var sampledRows: [Int]? {
            guard sample else { return nil }
            let tile = queryTile > 0 ? queryTile : FlashAttention.defaultQueryTile
            return (0..<queries).filter { $0 % 7 == 0 || $0 % tile == 0 || $0 % tile == tile - 1 || $0 == queries - 1 }
        }

        /// Seeded inputs q, k, v and the upstream gradient dO; q scaled by `queryScale`. dO is 0
        /// on the query rows outside `sampledRows`, which then add nothing to any gradient.
        func inputs(queryScale: Double = 1) -> (q: [Float], k: [Float], v: [Float], dO: [Float]) {
            var dO = Fixtures.randoms(queryCount, seed: 74)
            if let rows = sampledRows {
                let kept = Set(rows), width = heads * headDim
                for b in 0..<batch { for i in 0..<queries where !kept.contains(i) {
                    let start = (b * queries + i) * width
                    dO.replaceSubrange(start..<(start + width), with: repeatElement(0, count: width))
                } }
            }
            return (Fixtures.randoms(queryCount, seed: 71, scale: queryScale), Fixtures.randoms(keyCount, seed: 72),
                    Fixtures.randoms(keyCount, seed: 73), dO)
        }

        /// Elements of o (B, Tq, Hq, D) and of L (B, Hq, Tq) on `sampledRows`.
        func sampled(o: [some BinaryFloatingPoint], logsumexp: [some BinaryFloatingPoint]) -> (o: [Double], logsumexp: [Double]) {
            guard let rows = sampledRows else { return (o.map { Double($0) }, logsumexp.map { Double($0) }) }
            let width = heads * headDim
            var outO: [Double] = [], outL: [Double] = []
            for b in 0..<batch { for i in rows { outO += o[((b * queries + i) * width)..<((b * queries + i + 1) * width)].map { Double($0) } } }
            for bh in 0..<(batch * heads) { for i in rows { outL.append(Double(logsumexp[bh * queries + i])) } }
            return (outO, outL)
        }
    }

    struct Result { var o: [Float], logsumexp: [Float], dq: [Float], dk: [Float], dv: [Float] }

    static func flash(_ c: Case, _ x: (q: [Float], k: [Float], v: [Float], dO: [Float]), threads: Int = 1) -> Result {
        let kernel = c.kernel, t = KernelThreads(threads)
        var r = Result(o: [Float](repeating: .nan, count: c.queryCount), logsumexp: [Float](repeating: .nan, count: kernel.logsumexpCount),
                       dq: [Float](repeating: .nan, count: c.queryCount), dk: [Float](repeating: .nan, count: c.keyCount),
                       dv: [Float](repeating: .nan, count: c.keyCount))
        kernel.forward(q: x.q, k: x.k, v: x.v, o: &r.o, logsumexp: &r.logsumexp, threads: t)
        kernel.backward(q: x.q, k: x.k, v: x.v, o: r.o, logsumexp: r.logsumexp, dO: x.dO, dq: &r.dq, dk: &r.dk, dv: &r.dv, threads: t)
        return r
    }

    /// The naive twin in T, on `sampledRows` of a long shape.
    static func naive<T: BinaryFloatingPoint>(_ c: Case, _ x: (q: [T], k: [T], v: [T], dO: [T])) -> (o: [T], logsumexp: [T], dq: [T], dk: [T], dv: [T]) {
        let (o, l) = Reference.attention(c.reference, q: x.q, k: x.k, v: x.v, rows: c.sampledRows)
        let g = Reference.attentionBackward(c.reference, q: x.q, k: x.k, v: x.v, dO: x.dO)
        return (o, l, g.dq, g.dk, g.dv)
    }

    /// max |a − b| / max(1, |b|), where equal infinities (a logsumexp of −∞) agree and a NaN or
    /// an infinity on one side only is an infinite error (`KernelSelfTest.error`).
    static func error<A: BinaryFloatingPoint, B: BinaryFloatingPoint>(_ a: [A], _ b: [B]) -> Double {
        precondition(a.count == b.count)
        return KernelSelfTest.error(a, b)
    }

    // MARK: Flash against the naive twin

    /// A covering design rather than every combination: each (Tq, Tk) appears causal and, but for
    /// (1024, 1023), not; each head dimension with both maskings and both head layouts (MHA,
    /// GQA), and each masking with both layouts; small tiles where the shape is moderate, so that
    /// many tile boundaries (full, partial, skipped) are crossed. From Tq = 113 on, the naive
    /// twins (slow in a debug build) compute a sample of the query rows, about a fifth: o and L
    /// are compared there, and dO is 0 elsewhere, so that all of dq, dk, dv are compared.
    static let cases: [Case] = [
        Case(queries: 1, keys: 1, headDim: 32, causal: true, heads: 2, kvHeads: 1, batch: 2),
        Case(queries: 1, keys: 1, headDim: 128, causal: false),
        Case(queries: 1, keys: 147, headDim: 59, causal: true, batch: 2),
        Case(queries: 1, keys: 147, headDim: 64, causal: false, heads: 4, kvHeads: 2, keyTile: 64),
        Case(queries: 3, keys: 799, headDim: 128, causal: true, heads: 2, kvHeads: 1),
        Case(queries: 3, keys: 799, headDim: 32, causal: false, heads: 1, kvHeads: 1),
        Case(queries: 113, keys: 203, headDim: 64, causal: true, heads: 4, kvHeads: 2, batch: 2, queryTile: 16, keyTile: 32, sample: true),
        Case(queries: 113, keys: 203, headDim: 128, causal: false, heads: 2, kvHeads: 1, queryTile: 16, keyTile: 32, sample: true),
        Case(queries: 113, keys: 203, headDim: 59, causal: true, queryTile: 24, keyTile: 40, sample: true),
        Case(queries: 127, keys: 513, headDim: 32, causal: true, sample: true),
        Case(queries: 127, keys: 513, headDim: 59, causal: false, heads: 2, kvHeads: 1, queryTile: 32, keyTile: 96, sample: true),
        Case(queries: 127, keys: 513, headDim: 64, causal: true, queryTile: 32, keyTile: 96, sample: true),
        Case(queries: 1023, keys: 1024, headDim: 32, causal: true, heads: 2, kvHeads: 1, sample: true),
        Case(queries: 1023, keys: 1024, headDim: 32, causal: false, heads: 1, kvHeads: 1, queryTile: 128, keyTile: 128, sample: true),
        Case(queries: 1024, keys: 1023, headDim: 59, causal: true, heads: 1, kvHeads: 1, sample: true),
    ]

    @Test(arguments: cases)
    func flashMatchesTheNaiveTwinInFloat32AndTheFloat64Reference(_ c: Case) {
        let x = c.inputs()
        let got = Self.flash(c, x)
        let single = Self.naive(c, x)
        let double = Self.naive(c, (x.q.doubles, x.k.doubles, x.v.doubles, x.dO.doubles))
        let names = ["o", "logsumexp", "dq", "dk", "dv"]
        let (flashO, flashL) = c.sampled(o: got.o, logsumexp: got.logsumexp)
        let (singleO, singleL) = c.sampled(o: single.o, logsumexp: single.logsumexp)
        let (doubleO, doubleL) = c.sampled(o: double.o, logsumexp: double.logsumexp)
        let flash = [flashO, flashL, got.dq.doubles, got.dk.doubles, got.dv.doubles]
        let twin = [singleO, singleL, single.dq.doubles, single.dk.doubles, single.dv.doubles]
        let exact = [doubleO, doubleL, double.dq, double.dk, double.dv]
        for (n, name) in names.enumerated() {
            let vsTwin = Self.error(flash[n], twin[n]), vsExact = Self.error(flash[n], exact[n])
            #expect(vsTwin < 1e-5, "\(c.testDescription): \(name) differs from the Float32 twin by \(vsTwin)")
            #expect(vsExact < 1e-5, "\(c.testDescription): \(name) differs from the Float64 reference by \(vsExact)")
        }
    }

    /// The new twin with default positions and Tq = Tk is the causal attention the model has
    /// always used (`Reference.attention(... length:)`).
    @Test func theTwinWithDefaultPositionsIsTheModelsCausalAttention() {
        let c = Case(queries: 9, keys: 9, headDim: 6, causal: true, heads: 4, kvHeads: 2, batch: 2)
        let x = c.inputs()
        let (q, k, v) = (x.q.doubles, x.k.doubles, x.v.doubles)
        let twin = Reference.attention(c.reference, q: q, k: k, v: v).o
        let model = Reference.attention(q: q, k: k, v: v, batch: 2, length: 9, heads: 4, kvHeads: 2, headDim: 6)
        #expect(maxRelativeError(twin, model) < 1e-12)
    }

    // MARK: Masking by positions

    /// Queries placed before every key see nothing: o = 0, L = −∞, zero gradients, no NaN,
    /// with explicit positions and with the default alignment when Tq > Tk.
    @Test(arguments: [
        Case(queries: 6, keys: 9, headDim: 8, causal: true, heads: 2, kvHeads: 1, batch: 2, queryTile: 2, keyTile: 4,
             queryPositions: [0, 2, 5, 7, 8, 20], keyPositions: [3, 4, 5, 6, 7, 8, 9, 10, 11]),
        Case(queries: 5, keys: 3, headDim: 8, causal: true, heads: 2, kvHeads: 2, queryTile: 2, keyTile: 2),
        Case(queries: 70, keys: 40, headDim: 16, causal: true, heads: 2, kvHeads: 1),
    ])
    func rowsThatSeeNoKeyGiveZeroAndNoNaN(_ c: Case) {
        let x = c.inputs()
        let got = Self.flash(c, x)
        let want = Self.naive(c, (x.q.doubles, x.k.doubles, x.v.doubles, x.dO.doubles))
        let reference = c.reference
        var blind = 0
        for b in 0..<c.batch { for h in 0..<c.heads { for i in 0..<c.queries {
            guard !reference.keyPositions.contains(where: { $0 <= reference.queryPositions[i] }) else { continue }
            blind += 1
            #expect(got.logsumexp[(b * c.heads + h) * c.queries + i] == -.infinity)
            let row = ((b * c.queries + i) * c.heads + h) * c.headDim
            #expect(got.o[row..<(row + c.headDim)].allSatisfy { $0 == 0 } && got.dq[row..<(row + c.headDim)].allSatisfy { $0 == 0 })
        } } }
        #expect(blind > 0, "the case has no blind row")
        for array in [got.o, got.dq, got.dk, got.dv] { #expect(array.allSatisfy { $0.isFinite }) }
        #expect(got.logsumexp.allSatisfy { !$0.isNaN })
        for (a, b) in [(got.o, want.o), (got.logsumexp, want.logsumexp), (got.dq, want.dq), (got.dk, want.dk), (got.dv, want.dv)] {
            #expect(Self.error(a, b) < 1e-5)
        }
    }

    /// Scores of ±1e4 (q scaled up) stay finite and correct. The softmax is then one-hot, so o,
    /// L and dv match the Float64 reference closely. dq and dk are ≈ 0 in truth, but
    /// dS = P ⊙ (dP − D) subtracts D = rowsum(dO ⊙ O) from dP = dO · v, two Float32 dot products
    /// of the same vectors in different orders, and dk multiplies that rounding (≈ 1e−7 · |dP|)
    /// by q of size 1e4: so dq and dk are held to 1e−5 of the size a gradient through an
    /// unsaturated softmax would have (scale · max |k| and scale · max |q|); a NaN, an overflow
    /// or a wrong shift by the running maximum is off by orders of magnitude.
    @Test(arguments: [true, false])
    func hugeScoresStayFiniteAndCorrect(causal: Bool) {
        let c = Case(queries: 50, keys: 70, headDim: 64, causal: causal, heads: 2, kvHeads: 1, queryTile: 16, keyTile: 32)
        let x = c.inputs(queryScale: 1e4)
        let got = Self.flash(c, x)
        let want = Self.naive(c, (x.q.doubles, x.k.doubles, x.v.doubles, x.dO.doubles))
        for array in [got.o, got.logsumexp, got.dq, got.dk, got.dv] { #expect(array.allSatisfy { $0.isFinite }) }
        #expect(got.logsumexp.map { abs($0) }.max()! > 1e3, "scores are not large")
        let relativeL = zip(got.logsumexp, want.logsumexp).map { abs(Double($0) - $1) / abs($1) }.max()!
        #expect(relativeL < 1e-6)
        #expect(Self.error(got.o, want.o) < 1e-5 && Self.error(got.dv, want.dv) < 1e-5)
        let scale = 1 / Double(c.headDim).squareRoot()
        let dqError = zip(got.dq, want.dq).map { abs(Double($0) - $1) }.max()!
        let dkError = zip(got.dk, want.dk).map { abs(Double($0) - $1) }.max()!
        #expect(dqError <= 1e-5 * scale * Double(x.k.map { abs($0) }.max()!))
        #expect(dkError <= 1e-5 * scale * Double(x.q.map { abs($0) }.max()!))
    }

    // MARK: Threads

    /// One kv head group on two threads takes the split backward schedule, on one thread the
    /// fused one; two groups of two take the fused one on both: every result is the same bits.
    @Test(arguments: [
        Case(queries: 150, keys: 170, headDim: 24, causal: true, heads: 2, kvHeads: 1, queryTile: 32, keyTile: 48),
        Case(queries: 150, keys: 170, headDim: 24, causal: false, heads: 2, kvHeads: 1, queryTile: 32, keyTile: 48),
        Case(queries: 90, keys: 90, headDim: 16, causal: true, heads: 4, kvHeads: 2, batch: 2, queryTile: 16, keyTile: 32),
    ])
    func oneAndTwoThreadsGiveTheSameBits(_ c: Case) {
        let x = c.inputs()
        let one = Self.flash(c, x, threads: 1), two = Self.flash(c, x, threads: 2)
        #expect(one.o == two.o && one.logsumexp == two.logsumexp)
        #expect(one.dq == two.dq && one.dk == two.dk && one.dv == two.dv)
        #expect(Self.error(one.dk, Self.naive(c, x).dk) < 1e-5)
    }

    /// Keys in no particular order (the mask's per-pair path; ascending keys take the
    /// bisection path) and keys ascending with gaps, against the naive twin: outputs,
    /// logsumexp and every gradient.
    @Test(arguments: [
        Case(queries: 29, keys: 41, headDim: 8, causal: true, heads: 2, kvHeads: 1, batch: 2, queryTile: 8, keyTile: 16,
             queryPositions: (0..<29).map { ($0 * 7) % 29 + 6 }, keyPositions: (0..<41).map { ($0 * 17) % 41 }),
        Case(queries: 23, keys: 37, headDim: 8, causal: true, heads: 2, kvHeads: 2, queryTile: 4, keyTile: 8,
             queryPositions: (0..<23).map { 3 * $0 + 1 }, keyPositions: (0..<37).map { 2 * $0 }),
    ])
    func keysInAnyOrderAreMaskedByPosition(_ c: Case) {
        let x = c.inputs()
        let got = Self.flash(c, x), want = Self.naive(c, (x.q.doubles, x.k.doubles, x.v.doubles, x.dO.doubles))
        for (a, b) in [(got.o, want.o), (got.logsumexp, want.logsumexp), (got.dq, want.dq), (got.dk, want.dk), (got.dv, want.dv)] {
            #expect(Self.error(a, b) < 1e-5)
        }
    }

    // MARK: Gradients by finite differences

    /// The naive twin's backward and the flash backward against central differences of the
    /// Float64 twin's loss Σ dO ⊙ o, on a tiny shape with GQA, Tq ≠ Tk, tiles of 2 and a row
    /// that sees no key.
    @Test(arguments: [true, false])
    func backwardMatchesFiniteDifferences(causal: Bool) {
        let c = Case(queries: 4, keys: 5, headDim: 4, causal: causal, heads: 2, kvHeads: 1, queryTile: 2, keyTile: 2,
                     queryPositions: [0, 2, 3, 4], keyPositions: [1, 2, 3, 4, 5])
        let x = c.inputs()
        let (q, k, v, probe) = (x.q.doubles, x.k.doubles, x.v.doubles, x.dO.doubles)
        func loss(_ q: [Double], _ k: [Double], _ v: [Double]) -> Double {
            GradientCheck.dot(Reference.attention(c.reference, q: q, k: k, v: v).o, probe)
        }
        let numeric = (GradientCheck.numeric(at: q) { loss($0, k, v) }, GradientCheck.numeric(at: k) { loss(q, $0, v) },
                       GradientCheck.numeric(at: v) { loss(q, k, $0) })
        let twin = Reference.attentionBackward(c.reference, q: q, k: k, v: v, dO: probe)
        #expect(maxRelativeError(twin.dq, numeric.0) < 1e-8 && maxRelativeError(twin.dk, numeric.1) < 1e-8
                && maxRelativeError(twin.dv, numeric.2) < 1e-8)
        let got = Self.flash(c, x)
        #expect(GradientCheck.relativeError(got.dq, numeric.0) < 1e-5)
        #expect(GradientCheck.relativeError(got.dk, numeric.1) < 1e-5)
        #expect(GradientCheck.relativeError(got.dv, numeric.2) < 1e-5)
    }

    // MARK: Merging partial results (ring attention)

    static let whole = Case(queries: 37, keys: 100, headDim: 16, causal: true, heads: 2, kvHeads: 1, batch: 2, queryTile: 8, keyTile: 16)
    /// Key chunks, one of them empty; queries sit at 63..<100, so the last chunk is partly hidden.
    static let chunks: [Range<Int>] = [0..<10, 10..<10, 10..<45, 45..<70, 70..<100]

    /// The keys and values of `chunk` (B, |chunk|, Hkv, D), and the case restricted to them.
    static func restrict(_ x: [Float], to chunk: Range<Int>) -> [Float] {
        let c = whole, row = c.kvHeads * c.headDim
        return (0..<c.batch).flatMap { b in x[((b * c.keys + chunk.lowerBound) * row)..<((b * c.keys + chunk.upperBound) * row)] }
    }

    static func chunkCase(_ chunk: Range<Int>) -> Case {
        var c = whole
        c.keys = chunk.count
        c.queryPositions = Array((whole.keys - whole.queries)..<whole.keys)
        c.keyPositions = Array(chunk)
        return c
    }

    @Test(arguments: [1, 2, 3, 4, 5])
    func mergingKeyChunksInAnyTreeOrderGivesTheOneShotResult(seed: UInt64) {
        let x = Self.whole.inputs()
        let full = Self.flash(Self.whole, x)
        var partials: [(o: [Float], logsumexp: [Float])] = Self.chunks.map { chunk in
            let c = Self.chunkCase(chunk), kernel = c.kernel
            var o = [Float](repeating: 0, count: c.queryCount), l = [Float](repeating: 0, count: kernel.logsumexpCount)
            kernel.forward(q: x.q, k: Self.restrict(x.k, to: chunk), v: Self.restrict(x.v, to: chunk), o: &o, logsumexp: &l)
            return (o, l)
        }
        var state = seed &* 0x9E37_79B9_7F4A_7C15
        func random(_ n: Int) -> Int { state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407; return Int(state >> 33) % n }
        while partials.count > 1 {
            let a = partials.remove(at: random(partials.count)), b = partials.remove(at: random(partials.count))
            var (o, l) = a
            AttentionMerge.merge(o: &o, logsumexp: &l, with: b.o, otherLogsumexp: b.logsumexp,
                                 batch: Self.whole.batch, length: Self.whole.queries, heads: Self.whole.heads, headDim: Self.whole.headDim)
            partials.insert((o, l), at: random(partials.count + 1))
        }
        #expect(Self.error(partials[0].o, full.o) < 1e-6)
        #expect(Self.error(partials[0].logsumexp, full.logsumexp) < 1e-6)
    }

    /// `forward(accumulate: true)` continues from the (o, L) already there: running the key
    /// chunks one after another, in any order and starting from a chunk no query sees, gives
    /// the one-shot result — the merge ring attention does inside the kernel.
    @Test(arguments: [[0, 1, 2, 3, 4], [4, 2, 0, 3, 1], [1, 4, 3, 2, 0]])
    func accumulatingKeyChunksInAnyOrderGivesTheOneShotResult(order: [Int]) {
        let x = Self.whole.inputs()
        let full = Self.flash(Self.whole, x)
        var o = [Float](repeating: .nan, count: Self.whole.queryCount)
        var l = [Float](repeating: .nan, count: Self.whole.kernel.logsumexpCount)
        for (n, index) in order.enumerated() {
            let chunk = Self.chunks[index], kernel = Self.chunkCase(chunk).kernel
            kernel.forward(q: x.q, k: Self.restrict(x.k, to: chunk), v: Self.restrict(x.v, to: chunk), o: &o, logsumexp: &l,
                           accumulate: n > 0)
        }
        #expect(Self.error(o, full.o) < 1e-6)
        #expect(Self.error(l, full.logsumexp) < 1e-6)
        // A chunk no query sees (keys after every query) changes nothing, to the bit.
        let hidden = Self.chunkCase(0..<5)
        var later = hidden
        later.keyPositions = Array(200..<205)
        let (before, beforeL) = (o, l)
        later.kernel.forward(q: x.q, k: Self.restrict(x.k, to: 0..<5), v: Self.restrict(x.v, to: 0..<5), o: &o, logsumexp: &l,
                             accumulate: true)
        #expect(o == before && l == beforeL)
    }

    @Test func mergingAPartialThatSawNoKeyChangesNothing() {
        let c = Self.whole, x = c.inputs()
        let full = Self.flash(c, x)
        let empty = Self.chunkCase(10..<10), kernel = empty.kernel
        var none = [Float](repeating: 1, count: c.queryCount), noneL = [Float](repeating: 1, count: kernel.logsumexpCount)
        kernel.forward(q: x.q, k: [], v: [], o: &none, logsumexp: &noneL)
        #expect(none.allSatisfy { $0 == 0 } && noneL.allSatisfy { $0 == -.infinity })
        var (o, l) = (full.o, full.logsumexp)
        AttentionMerge.merge(o: &o, logsumexp: &l, with: none, otherLogsumexp: noneL, batch: c.batch, length: c.queries, heads: c.heads, headDim: c.headDim)
        #expect(o == full.o && l == full.logsumexp)
        AttentionMerge.merge(o: &none, logsumexp: &noneL, with: full.o, otherLogsumexp: full.logsumexp,
                             batch: c.batch, length: c.queries, heads: c.heads, headDim: c.headDim)
        #expect(none == full.o && noneL == full.logsumexp)
    }

    /// With the global L and D given, each key chunk's backward is its share of the gradient:
    /// dq sums over chunks, dk and dv are the chunk's rows of the one-shot gradients.
    @Test func chunkBackwardsWithGlobalStatisticsAddUpToTheOneShotGradients() {
        let c = Self.whole, x = c.inputs()
        let full = Self.flash(c, x)
        var rowDot = [Float](repeating: 0, count: c.kernel.logsumexpCount)
        FlashAttention.rowDot(o: full.o, dO: x.dO, into: &rowDot, batch: c.batch, length: c.queries, heads: c.heads, headDim: c.headDim)
        var dq = [Float](repeating: 0, count: c.queryCount)
        var dk = [[Float]](repeating: [], count: Self.chunks.count), dv = dk
        for (n, chunk) in Self.chunks.enumerated() {
            let part = Self.chunkCase(chunk)
            var dqPart = [Float](repeating: 0, count: c.queryCount)
            var dkPart = [Float](repeating: .nan, count: part.keyCount), dvPart = dkPart
            part.kernel.backward(q: x.q, k: Self.restrict(x.k, to: chunk), v: Self.restrict(x.v, to: chunk),
                                 logsumexp: full.logsumexp, rowDot: rowDot, dO: x.dO, dq: &dqPart, dk: &dkPart, dv: &dvPart)
            (dk[n], dv[n]) = (dkPart, dvPart)
            for i in dq.indices { dq[i] += dqPart[i] }
        }
        #expect(Self.error(dq, full.dq) < 1e-5)
        for (n, chunk) in Self.chunks.enumerated() {
            #expect(Self.error(dk[n], Self.restrict(full.dk, to: chunk)) < 1e-5, "dk of keys \(chunk)")
            #expect(Self.error(dv[n], Self.restrict(full.dv, to: chunk)) < 1e-5, "dv of keys \(chunk)")
        }
    }
}
