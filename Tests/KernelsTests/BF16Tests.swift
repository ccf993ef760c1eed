import Testing
import Kernels
import TensorCore
import _TestSupport

/// bf16 rounding against a Float64 reference, and the bf16 GEMM against a Float64 product of
/// the rounded inputs, across kernels and thread counts.
@Suite struct BF16Tests {
    /// Round-to-nearest-even of a finite Float32 to bf16, decided in Float64: the two bf16
    /// neighbours of |x| (truncated, and one bf16 ulp up, 2^128 standing for infinity), nearest
    /// wins, a tie goes to the even mantissa.
    static func referenceRound(_ x: Float) -> UInt16 {
        let bits = x.bitPattern, sign = UInt16(bits >> 16) & 0x8000
        let low = UInt16((bits & 0x7fff_ffff) >> 16), high = low + 1
        func value(_ h: UInt16) -> Double { h == 0x7f80 ? 0x1p128 : Double(Float(bitPattern: UInt32(h) << 16)) }
        let magnitude = Double(abs(x)), below = magnitude - value(low), above = value(high) - magnitude
        let chosen = below < above ? low : above < below ? high : (low & 1 == 0 ? low : high)
        return sign | chosen
    }

    /// Random bit patterns: every exponent (denormals and the top binades included), ties.
    static func patterns(_ count: Int, seed: UInt64) -> [Float] {
        var rng = RNG(seed: seed)
        return (0..<count).map { i in
            var bits = UInt32(truncatingIfNeeded: rng.next())
            if i % 4 == 1 { bits = (bits & 0xffff_0000) | 0x8000 }          // exact tie
            if i % 4 == 2 { bits &= 0x807f_ffff }                            // denormal
            if i % 8 == 3 { bits = (bits & 0x807f_ffff) | 0x7f00_0000 }      // near the largest finite values
            return Float(bitPattern: bits)
        }
    }

    @Test func roundingIsNearestEvenAgainstFloat64() {
        for x in Self.patterns(200_000, seed: 5) where x.isFinite {
            #expect(BF16.round(x) == Self.referenceRound(x), "x = \(x) bits \(String(x.bitPattern, radix: 16))")
        }
        // Ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and goes to 1 (even); 1 + 3·2^-8
        // lies halfway between 1 + 2^-7 and 1 + 2^-6 and goes up (to the even one).
        #expect(BF16.rounded(1 + 0x1p-8) == 1)
        #expect(BF16.rounded(1 + 3 * 0x1p-8) == 1 + 0x1p-6)
        #expect(BF16.rounded(-(1 + 0x1p-8)) == -1)
    }

    @Test func infinitiesNaNsZerosAndDenormals() {
        #expect(BF16.round(.infinity) == 0x7f80 && BF16.round(-.infinity) == 0xff80)
        #expect(BF16.round(0) == 0 && BF16.round(-0.0) == 0x8000)
        #expect(BF16.round(.greatestFiniteMagnitude) == 0x7f80, "past the largest bf16: rounds to infinity")
        for payload: UInt32 in [0x7fc0_0000, 0x7f80_0001, 0xff80_8001, 0x7fbf_ffff, 0xffff_ffff] {
            let h = BF16.round(Float(bitPattern: payload))
            #expect(BF16.widen(h).isNaN && h & 0x0040 != 0, "NaN \(String(payload, radix: 16)) stays NaN, made quiet")
            #expect(h & 0x8000 == UInt16(payload >> 16) & 0x8000, "sign kept")
        }
        // Denormals round like any other value (not flushed).
        let tiny = Float(bitPattern: 0x0001_8000)   // a Float32 denormal, a bf16 tie
        #expect(BF16.round(tiny) == 0x0002)
        #expect(BF16.round(Float.leastNonzeroMagnitude) == 0)
        #expect(BF16.round(Float(bitPattern: 0x007f_ffff)) == 0x0080, "the largest denormal rounds up to the smallest normal")
    }

    @Test func vectorRoundingEqualsScalarAndWideningIsExact() {
        let xs = Self.patterns(1_003, seed: 9) + [.nan, .infinity, -.infinity, 0, -0.0]
        var rounded = [UInt16](repeating: 0, count: xs.count), widened = [Float](repeating: 0, count: xs.count)
        BF16.round(xs, into: &rounded, count: xs.count)
        BF16.widen(rounded, into: &widened, count: xs.count)
        for i in xs.indices {
            #expect(rounded[i] == BF16.round(xs[i]), "element \(i)")
            #expect(widened[i].bitPattern == UInt32(rounded[i]) << 16)
        }
    }

    /// C = alpha · op(A) · op(B) + beta · C in Float64 on bf16-rounded inputs, and the bound of
    /// Float32 accumulation: (k + 3) · 2⁻²⁴ · (Σ|a·b| + |beta · c|) per element.
    static func reference(_ tA: Bool, _ tB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float, _ a: [Float], _ lda: Int,
                          _ b: [Float], _ ldb: Int, _ beta: Float, _ c: [Float], _ ldc: Int) -> (value: [Double], bound: [Double]) {
        var value = [Double](repeating: 0, count: m * ldc), bound = value
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0, magnitude = 0.0
                for p in 0..<k {
                    let x = Double(BF16.rounded(tA ? a[p * lda + i] : a[i * lda + p]))
                    let y = Double(BF16.rounded(tB ? b[j * ldb + p] : b[p * ldb + j]))
                    sum += x * y
                    magnitude += abs(x * y)
                }
                let old = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
                value[i * ldc + j] = Double(alpha) * sum + old
                bound[i * ldc + j] = Double(k + 3) * 0x1p-24 * (abs(Double(alpha)) * magnitude + abs(old)) + 1e-30
            }
        }
        return (value, bound)
    }

    static let kernels = BF16Kernel.allCases.filter(\.isAvailable)

    /// `BF16Matmul.gemm` on Float32 arrays (pointers valid for the whole call).
    static func gemm(_ tA: Bool, _ tB: Bool, _ m: Int, _ n: Int, _ k: Int, alpha: Float = 1, _ a: [Float], _ lda: Int,
                     _ b: [Float], _ ldb: Int, beta: Float = 0, _ c: inout [Float], _ ldc: Int,
                     threads: Int = 1, kernel: BF16Kernel = .best) {
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                BF16Matmul.gemm(transposeA: tA, transposeB: tB, m: m, n: n, k: k, alpha: alpha, a: .float(ap.baseAddress!), lda: lda,
                                b: .float(bp.baseAddress!), ldb: ldb, beta: beta, c: &c, ldc: ldc, threads: KernelThreads(threads), kernel: kernel)
            }
        }
    }
    static let shapes: [(Int, Int, Int)] = [(1, 1, 1), (2, 7, 15), (16, 17, 33), (31, 33, 2), (15, 1, 257), (257, 16, 7),
                                            (33, 255, 17), (7, 31, 1100)]

    @Test(arguments: shapes)
    func gemmMatchesFloat64OfRoundedInputs(shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        for (case_, (tA, tB)) in [(false, false), (false, true), (true, false), (true, true)].enumerated() {
            let beta: Float = case_ % 2 == 0 ? 0 : 1, alpha: Float = case_ == 3 ? 0.5 : 1
            let lda = (tA ? m : k) + 3, ldb = (tB ? k : n) + 1, ldc = n + 2
            let a = Fixtures.randoms(lda * (tA ? k : m), seed: 1), b = Fixtures.randoms(ldb * (tB ? n : k), seed: 2)
            let c0 = Fixtures.randoms(m * ldc, seed: 3)
            let want = Self.reference(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c0, ldc)
            var results: [[Float]] = []
            for kernel in Self.kernels {
                var c = c0
                Self.gemm(tA, tB, m, n, k, alpha: alpha, a, lda, b, ldb, beta: beta, &c, ldc, kernel: kernel)
                for i in 0..<m {
                    for j in 0..<n {
                        let e = i * ldc + j
                        #expect(abs(Double(c[e]) - want.value[e]) <= want.bound[e], "\(kernel) m=\(m) n=\(n) k=\(k) tA=\(tA) tB=\(tB) (\(i), \(j))")
                    }
                    for j in n..<ldc { #expect(c[i * ldc + j] == c0[i * ldc + j], "beyond n untouched") }
                }
                results.append(c)
            }
            #expect(results.allSatisfy { $0.map(\.bitPattern) == results[0].map(\.bitPattern) }, "kernels differ")
        }
    }

    @Test func betaZeroIgnoresNaNInCAndEmptyKScales() {
        var c: [Float] = [.nan, .nan, 3, 4]
        Self.gemm(false, false, 2, 2, 1, [1, 2], 1, [1, 1], 2, &c, 2)
        #expect(c == [1, 1, 2, 2])
        Self.gemm(false, false, 2, 2, 0, [0], 1, [0], 2, beta: 0.5, &c, 2)
        #expect(c == [0.5, 0.5, 1, 1])
    }

    @Test func sameBitsForAnyThreadCountAndForPreRoundedOperands() {
        let (m, n, k) = (131, 97, 1100)   // three k blocks; splits cut rows and columns into uneven parts
        let a = Fixtures.randoms(m * k, seed: 4), b = Fixtures.randoms(n * k, seed: 5)
        var aBits = [UInt16](repeating: 0, count: a.count), bBits = [UInt16](repeating: 0, count: b.count)
        BF16.round(a, into: &aBits, count: a.count)
        BF16.round(b, into: &bBits, count: b.count)
        func product(_ threads: Int, rounded: Bool, wide: Bool) -> [UInt32] {
            let (rows, cols) = wide ? (n, m) : (m, n)
            var c = [Float](repeating: 0, count: rows * cols)
            a.withUnsafeBufferPointer { af in b.withUnsafeBufferPointer { bf in
                aBits.withUnsafeBufferPointer { ab in bBits.withUnsafeBufferPointer { bb in
                    let first: BF16Operand = rounded ? .bf16(ab.baseAddress!) : .float(af.baseAddress!)
                    let second: BF16Operand = rounded ? .bf16(bb.baseAddress!) : .float(bf.baseAddress!)
                    // wide: C (n, m) = B · Aᵀ, which splits by columns.
                    BF16Matmul.gemm(transposeA: false, transposeB: true, m: rows, n: cols, k: k, a: wide ? second : first, lda: k,
                                    b: wide ? first : second, ldb: k, c: &c, ldc: cols, threads: KernelThreads(threads))
                } }
            } }
            return c.map(\.bitPattern)
        }
        for wide in [false, true] {
            let one = product(1, rounded: false, wide: wide)
            for threads in [2, 3, 5] { #expect(product(threads, rounded: false, wide: wide) == one, "\(threads) threads, wide \(wide)") }
            #expect(product(2, rounded: true, wide: wide) == one, "pre-rounded operands")
        }
    }

    /// C (m, n) bits of op(A) · op(B) from the Float32 operands (rounded while packing) or from
    /// their bf16 bits (`rounded`), C starting as NaN.
    static func product(_ tA: Bool, _ tB: Bool, _ m: Int, _ n: Int, _ k: Int, _ a: [Float], _ aBits: [UInt16], _ lda: Int,
                        _ b: [Float], _ bBits: [UInt16], _ ldb: Int, rounded: Bool, threads: Int, kernel: BF16Kernel) -> [UInt32] {
        var c = [Float](repeating: .nan, count: m * n)
        a.withUnsafeBufferPointer { af in b.withUnsafeBufferPointer { bf in
            aBits.withUnsafeBufferPointer { ab in bBits.withUnsafeBufferPointer { bb in
                BF16Matmul.gemm(transposeA: tA, transposeB: tB, m: m, n: n, k: k,
                                a: rounded ? .bf16(ab.baseAddress!) : .float(af.baseAddress!), lda: lda,
                                b: rounded ? .bf16(bb.baseAddress!) : .float(bf.baseAddress!), ldb: ldb,
                                c: &c, ldc: n, threads: KernelThreads(threads), kernel: kernel)
            } }
        } }
        return c.map(\.bitPattern)
    }

    /// bf16 operands (read in place, lines side by side or k side by side) give the bits of
    /// the same values as Float32 rounded while packing, in every transpose, with odd depths
    /// (the padded half of the last pair), edge panels of both kernels' widths, strides wider
    /// than the matrix, 1 to 3 threads and every kernel.
    @Test func preRoundedOperandsEqualRoundingWhilePackingInEveryLayout() {
        for (m, n, k) in [(13, 45, 7), (150, 37, 1101), (12, 32, 2)] {
            for (tA, tB) in [(false, false), (false, true), (true, false), (true, true)] {
                let lda = (tA ? m : k) + 3, ldb = (tB ? k : n) + 1
                let a = Fixtures.randoms(lda * (tA ? k : m), seed: 6), b = Fixtures.randoms(ldb * (tB ? n : k), seed: 7)
                var aBits = [UInt16](repeating: 0, count: a.count), bBits = [UInt16](repeating: 0, count: b.count)
                BF16.round(a, into: &aBits, count: a.count)
                BF16.round(b, into: &bBits, count: b.count)
                for kernel in Self.kernels {
                    for threads in 1...3 {
                        var results: [[UInt32]] = []
                        for rounded in [false, true] {
                            results.append(Self.product(tA, tB, m, n, k, a, aBits, lda, b, bBits, ldb, rounded: rounded,
                                                        threads: threads, kernel: kernel))
                        }
                        #expect(results[0] == results[1], "\(kernel) m=\(m) n=\(n) k=\(k) tA=\(tA) tB=\(tB) threads \(threads)")
                    }
                }
            }
        }
    }

    /// Operands whose lines lie side by side (Aᵀ and B of a weight gradient) are paired by
    /// AVX-512 in one pass from the two k rows, 16 lines at a time, with rows prefetched ahead;
    /// the portable kernel packs them value by value. Same bits on awkward sizes: lines below,
    /// across and past a vector, a 12-row and a 32-column panel and a 144-row block (1, 13, 17,
    /// 47, 150), odd depths and a depth past the 512 block (1, 3, 6, 515), strides wider than
    /// the matrix, Float32 and bf16 operands, 1–3 threads.
    @Test(.enabled(if: BF16Kernel.hardware.isAvailable))
    func linesSideBySidePairedInOnePassEqualThePortablePath() {
        for (m, n) in [(1, 1), (13, 47), (17, 15), (150, 33), (47, 150)] {
            for k in [1, 3, 6, 515] {
                let lda = m + 5, ldb = n + 3
                let a = Fixtures.randoms(lda * k, seed: UInt64(8 + m)), b = Fixtures.randoms(ldb * k, seed: UInt64(9 + n))
                var aBits = [UInt16](repeating: 0, count: a.count), bBits = [UInt16](repeating: 0, count: b.count)
                BF16.round(a, into: &aBits, count: a.count)
                BF16.round(b, into: &bBits, count: b.count)
                var results: [[UInt32]] = []
                for kernel in [BF16Kernel.portable, .hardware] {
                    for threads in 1...3 {
                        for rounded in [false, true] {
                            results.append(Self.product(true, false, m, n, k, a, aBits, lda, b, bBits, ldb, rounded: rounded,
                                                        threads: threads, kernel: kernel))
                        }
                    }
                }
                #expect(results.allSatisfy { $0 == results[0] }, "m=\(m) n=\(n) k=\(k)")
                #expect(!results[0].contains(Float.nan.bitPattern), "every element written")
            }
        }
    }

    /// The emulation is the instruction: random and denormal-heavy inputs, every lane's
    /// rounding, flush-to-zero and pair order compared bit for bit (only on an AVX512_BF16 CPU).
    @Test(.enabled(if: BF16Kernel.hardware.isAvailable))
    func emulationEqualsHardwareBitwise() {
        var rng = RNG(seed: 11)
        for round in 0..<2 {
            let (m, n, k) = (29, 45, 70)
            let values: [Float] = (0..<(m * k + k * n)).map { _ in
                if round == 0 { return Float(rng.nextNormal()) }
                let bits = UInt32(truncatingIfNeeded: rng.next())
                switch bits >> 29 {
                case 0: return Float(bitPattern: bits & 0x807f_ffff)                    // denormal
                case 1: return Float(bitPattern: (bits & 0x80ff_ffff) | 0x0080_0000)    // smallest binades: products underflow
                case 2: return Float(bitPattern: (bits & 0x807f_ffff) | 0x3f00_0000)
                default: return Float(rng.nextNormal()) * 0x1p-63
                }
            }
            let a = Array(values[..<(m * k)]), b = Array(values[(m * k)...])
            var hardware = [Float](repeating: 0, count: m * n), portable = hardware
            Self.gemm(false, false, m, n, k, a, k, b, n, &hardware, n, kernel: .hardware)
            Self.gemm(false, false, m, n, k, a, k, b, n, &portable, n, kernel: .portable)
            #expect(hardware.map(\.bitPattern) == portable.map(\.bitPattern), round == 0 ? "normal inputs" : "denormal-heavy inputs")
        }
    }

    /// What the instruction does with denormals, on every kernel: a bf16 denormal input reads
    /// as zero (2⁻¹³⁰ · 2¹⁰⁰ would be 2⁻³⁰), a denormal result is flushed to zero (2⁻¹⁰⁰ · 2⁻³⁰),
    /// a normal one is kept exactly.
    @Test func denormalInputsReadAsZeroAndDenormalResultsFlush() {
        for kernel in Self.kernels {
            for (x, y, want) in [(Float(bitPattern: 0x0040_0000), Float(0x1p100), Float(0)), (0x1p-100, 0x1p-30, 0), (0x1p-100, 0x1p-20, 0x1p-120)] {
                var c: [Float] = [1]
                Self.gemm(false, false, 1, 1, 1, [x], 1, [y], 1, &c, 1, kernel: kernel)
                #expect(c == [want], "\(kernel): \(x) · \(y)")
            }
        }
    }

    /// SwiGLU's bf16 outputs (made rounded, for products) are the Float32 functions' outputs
    /// rounded, bit for bit, on lengths around its chunk and vector widths and on thread counts
    /// that split the work (the Float32 functions' vector/scalar split moves with the ranges).
    @Test func swiGLUWithBF16OutputsIsTheFloat32OutputsRounded() {
        var rng = RNG(seed: 17)
        for count in [1, 7, 8, 9, 2047, 2048, 2049, 4103, 40_001] {
            let gate = (0..<count).map { _ in Float(rng.nextNormal()) * 4 }, up = (0..<count).map { _ in Float(rng.nextNormal()) }
            let dOut = (0..<count).map { _ in Float(rng.nextNormal()) }
            for threads in [1, 2, 3] {
                let t = KernelThreads(threads)
                var h = [Float](repeating: 0, count: count), dGate = h, dUp = h
                var h16 = [UInt16](repeating: 0, count: count), dGate16 = h16, dUp16 = h16
                SwiGLU.forward(gate: gate, up: up, out: &h, count: count, threads: t)
                SwiGLU.forward(gate: gate, up: up, bf16: &h16, count: count, threads: t)
                SwiGLU.backward(gate: gate, up: up, dOut: dOut, dGate: &dGate, dUp: &dUp, count: count, threads: t)
                SwiGLU.backward(gate: gate, up: up, dOut: dOut, bf16: &dGate16, dUp: &dUp16, count: count, threads: t)
                #expect(h16 == h.map { BF16.round($0) }, "forward, \(count) values, \(threads) threads")
                #expect(dGate16 == dGate.map { BF16.round($0) }, "dGate, \(count) values, \(threads) threads")
                #expect(dUp16 == dUp.map { BF16.round($0) }, "dUp, \(count) values, \(threads) threads")
            }
        }
    }
}
