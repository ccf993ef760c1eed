import CGemm
import Testing
@testable import Kernels
import _TestSupport

/// Tessera's own GEMM (`TesseraGemm`) on every instruction set this CPU runs, against a Float64
/// product with the same strides, and bit for bit across kernel thread counts.
@Suite struct TesseraGemmTests {
    static let isas = TesseraGemm.ISA.available(on: CPUInfo.current.features)

    /// One product: op(A) (m, k) and op(B) (k, n) with leading dimensions `pad` wider than their
    /// rows, C (m, n) with ldc = n + pad.
    struct Case {
        let m: Int, n: Int, k: Int, transposeA: Bool, transposeB: Bool, alpha: Float, beta: Float, pad: Int
        var lda: Int { (transposeA ? m : k) + pad }
        var ldb: Int { (transposeB ? k : n) + pad }
        var ldc: Int { n + pad }
        var a: [Float] { Fixtures.randoms((transposeA ? k : m) * lda, seed: UInt64(m * 7 + k)) }
        var b: [Float] { Fixtures.randoms((transposeB ? n : k) * ldb, seed: UInt64(n * 11 + k + 1)) }
        /// C before the product: NaN with beta 0 (which must not read it), values otherwise.
        var c: [Float] { beta == 0 ? [Float](repeating: .nan, count: m * ldc) : Fixtures.randoms(m * ldc, seed: 99) }

        /// alpha · op(A) · op(B) + beta · C in Float64, over the m × n elements (padding skipped),
        /// and the bound of a Float32 evaluation: (k + 3) units in the last place of the sum of
        /// the terms' magnitudes (a chain of k roundings, then alpha, beta and the add).
        func reference(_ a: [Float], _ b: [Float], _ c: [Float]) -> (values: [Double], bounds: [Double]) {
            var out: [Double] = [], bounds: [Double] = []
            out.reserveCapacity(m * n)
            a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in
                for i in 0..<m {
                    for j in 0..<n {
                        var sum = 0.0, magnitude = 0.0
                        for p in 0..<k {
                            let term = Double(transposeA ? a[p * lda + i] : a[i * lda + p]) * Double(transposeB ? b[j * ldb + p] : b[p * ldb + j])
                            sum += term
                            magnitude += abs(term)
                        }
                        let scaled = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
                        out.append(Double(alpha) * sum + scaled)
                        bounds.append(Double(k + 3) * 0x1p-24 * (abs(Double(alpha)) * magnitude + abs(scaled)))
                    }
                }
            } }
            return (out, bounds)
        }

        func elements(_ c: [Float]) -> [Float] { (0..<m).flatMap { c[($0 * ldc)..<($0 * ldc + n)] } }
    }

    /// The edge sizes of the issue: tiles ± 1 of every kernel (4, 6, 8, 12, 16, 32) and k across a
    /// KC block (KC + 1). Every m × n pair with k in {1, 16, 257, KC + 1} plus the 255/257 shapes,
    /// and m past one block of A: blocks of up to `mcSmall` rows when n ≤ NC and A is not transposed, and
    /// MC + 4 rows with n > NC (two blocks of A, each under five panels of B, the last 8 wide).
    static let edges = [1, 2, 7, 15, 16, 17, 31, 33]
    static var cases: [Case] {
        var shapes: [(Int, Int, Int)] = []
        for m in edges { for n in edges { for k in [1, 16, 257, TesseraGemm.kc + 1] { shapes.append((m, n, k)) } } }
        shapes += [(255, 33, 17), (17, 257, 31), (257, 15, 255), (31, 255, 257), (TesseraGemm.mc + 4, 33, 17),
                   (TesseraGemm.mc + 4, TesseraGemm.nc + 8, 2)]
        var out: [Case] = []
        for (index, (m, n, k)) in shapes.enumerated() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                // Alternate beta 0 / 1, alpha 1 / −0.75 and the padding over the cases.
                let variant = index + (ta ? 1 : 0) + (tb ? 2 : 0)
                out.append(Case(m: m, n: n, k: k, transposeA: ta, transposeB: tb, alpha: variant % 3 == 0 ? -0.75 : 1,
                                beta: variant % 2 == 0 ? 0 : 1, pad: variant % 4 == 1 ? 0 : 3))
            }
        }
        return out
    }

    @Test(arguments: isas)
    func matchesFloat64ReferenceOnEdgeShapes(isa: TesseraGemm.ISA) {
        for test in Self.cases {
            let a = test.a, b = test.b, before = test.c
            var c = before
            let want = test.reference(a, b, c)
            c.withUnsafeMutableBufferPointer { out in
                TesseraGemm.gemm(isa: isa, transposeA: test.transposeA, transposeB: test.transposeB, m: test.m, n: test.n, k: test.k,
                                 alpha: test.alpha, a: a, lda: test.lda, b: b, ldb: test.ldb, beta: test.beta,
                                 c: out.baseAddress!, ldc: test.ldc)
            }
            let got = test.elements(c)
            let outside = got.indices.filter { !(abs(Double(got[$0]) - want.values[$0]) <= want.bounds[$0]) }
            #expect(outside.isEmpty, "\(isa) \(test): \(outside.count) elements beyond the Float32 bound, first \(outside.first.map { "\(got[$0]) vs \(want.values[$0])" } ?? "")")
            // The padding between rows of C is never written.
            for i in 0..<test.m where test.pad > 0 {
                let padding = c[(i * test.ldc + test.n)..<((i + 1) * test.ldc)]
                #expect(padding.elementsEqual(before[(i * test.ldc + test.n)..<((i + 1) * test.ldc)]) { $0 == $1 || ($0.isNaN && $1.isNaN) }, "\(isa) \(test) row \(i)")
            }
        }
    }

    /// Packing (4 × 4 SSE transposes and fixed-width row copies; with AVX-512 16 × 16 transposes
    /// and masked row moves) is a copy: every packer this CPU runs, every width of sliver r,
    /// every remainder of width and depth, both layouts, against the definition in the header,
    /// zeros past the width, and nothing written past the panel.
    @Test(arguments: isas)
    func packingCopiesEveryLineAndDepthExactly(isa: TesseraGemm.ISA) {
        let pack = TesseraGemm.Kernel(isa).pack
        for strided in [false, true] {
            for r in [4, 6, 8, 12, 16, 32] {
                for width in [1, 3, 4, 5, r - 1, r, r + 1, 2 * r + 5] where width > 0 {
                    for kc in [1, 3, 4, 7, 9, 16, 17, 257] {
                        let ld = (strided ? kc : width) + 2
                        let source = Fixtures.randoms((strided ? width : kc) * ld, seed: UInt64(r * 1000 + width * 10 + kc))
                        let slivers = (width + r - 1) / r
                        var out = [Float](repeating: .nan, count: slivers * r * kc + 1)
                        source.withUnsafeBufferPointer { src in
                            out.withUnsafeMutableBufferPointer { pack(strided ? 1 : 0, width, kc, src.baseAddress!, ld, r, $0.baseAddress!) }
                        }
                        var want = [Float](repeating: 0, count: slivers * r * kc)
                        for line in 0..<width {
                            for p in 0..<kc {
                                want[(line / r) * r * kc + p * r + line % r] = strided ? source[line * ld + p] : source[p * ld + line]
                            }
                        }
                        #expect(out.dropLast().map(\.bitPattern) == want.map(\.bitPattern), "\(isa) strided \(strided) r \(r) width \(width) kc \(kc)")
                        #expect(out.last!.isNaN, "\(isa) wrote past the panel: strided \(strided) r \(r) width \(width) kc \(kc)")
                    }
                }
            }
        }
    }

    /// Products large enough to be split over 2 and 3 threads (`Matmul.minimumWorkPerThread`),
    /// by rows (m ≥ n) and by columns, over 3 KC blocks of k: the same bits as one thread.
    @Test func bitwiseEqualAcrossThreadCounts() throws {
        #expect(Matmul.implementation == .tessera)
        for test in [Case(m: 257, n: 131, k: 2 * TesseraGemm.kc + 1, transposeA: false, transposeB: true, alpha: 1, beta: 1, pad: 3),
                     Case(m: 67, n: 700, k: 300, transposeA: true, transposeB: false, alpha: 0.5, beta: 0, pad: 1)] {
            let a = test.a, b = test.b
            var results: [[Float]] = []
            for threads in [1, 2, 3] {
                var c = test.c
                Matmul.gemm(transposeA: test.transposeA, transposeB: test.transposeB, m: test.m, n: test.n, k: test.k, alpha: test.alpha,
                            a: a, lda: test.lda, b: b, ldb: test.ldb, beta: test.beta, c: &c, ldc: test.ldc, threads: KernelThreads(threads))
                results.append(test.elements(c))
            }
            #expect(results[1].map(\.bitPattern) == results[0].map(\.bitPattern), "2 threads \(test)")
            #expect(results[2].map(\.bitPattern) == results[0].map(\.bitPattern), "3 threads \(test)")
        }
    }

    /// A product split over 2 and 3 threads with the operand they do not split packed once for
    /// all (`TesseraGemm.gemm(parts:)`: B under blocks of rows when n ≤ NC, A under blocks of
    /// columns), on every instruction set: the bits of one thread and within the Float32 bound
    /// of Float64, on awkward shapes (fewer rows or columns than threads, partial slivers and KC
    /// blocks, MC + 4 rows, B wider than a panel so not shared), every transpose, beta 0 and 1.
    @Test(arguments: isas)
    func sharedPanelSplitsGiveTheBitsOfOneThread(isa: TesseraGemm.ISA) {
        let sizes = [1, 2, 7, 17, 33, 257]
        var shapes: [(Int, Int, Int)] = []
        for m in sizes { for n in sizes { for k in m == 257 && n == 257 ? [17] : [1, 17, TesseraGemm.kc + 1] { shapes.append((m, n, k)) } } }
        shapes += [(TesseraGemm.mc + 4, 33, 17), (33, TesseraGemm.mc + 4, 17), (TesseraGemm.mc + 4, TesseraGemm.nc + 8, 2)]
        for (index, (m, n, k)) in shapes.enumerated() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let variant = index + (ta ? 1 : 0) + (tb ? 2 : 0)
                let test = Case(m: m, n: n, k: k, transposeA: ta, transposeB: tb, alpha: variant % 3 == 0 ? -0.75 : 1,
                                beta: variant % 2 == 0 ? 0 : 1, pad: variant % 4 == 1 ? 0 : 3)
                let a = test.a, b = test.b
                var results: [[Float]] = []
                for parts in [1, 2, 3] {
                    var c = test.c
                    c.withUnsafeMutableBufferPointer { out in
                        if parts == 1 {
                            TesseraGemm.gemm(isa: isa, transposeA: ta, transposeB: tb, m: m, n: n, k: k, alpha: test.alpha,
                                             a: a, lda: test.lda, b: b, ldb: test.ldb, beta: test.beta, c: out.baseAddress!, ldc: test.ldc)
                        } else {
                            TesseraGemm.gemm(isa: isa, parts: parts, transposeA: ta, transposeB: tb, m: m, n: n, k: k, alpha: test.alpha,
                                             a: a, lda: test.lda, b: b, ldb: test.ldb, beta: test.beta, c: out.baseAddress!, ldc: test.ldc)
                        }
                    }
                    results.append(c)
                }
                #expect(results[1].map(\.bitPattern) == results[0].map(\.bitPattern), "\(isa) 2 threads \(test)")
                #expect(results[2].map(\.bitPattern) == results[0].map(\.bitPattern), "\(isa) 3 threads \(test)")
                if index % 3 == 0 || m > 257 || n > 257 {  // the Float64 check on a third of the small shapes keeps the suite short
                    let want = test.reference(a, b, test.c), got = test.elements(results[2])
                    let outside = got.indices.filter { !(abs(Double(got[$0]) - want.values[$0]) <= want.bounds[$0]) }
                    #expect(outside.isEmpty, "\(isa) 3 threads \(test): \(outside.count) elements beyond the Float32 bound")
                }
            }
        }
    }

    /// Both vector kernels are one fused chain per element over each KC block: the same bits.
    @Test func vectorKernelsAgreeBitwise() throws {
        guard Self.isas.contains(.avx512), Self.isas.contains(.avx2) else { return }
        let test = Case(m: 45, n: 77, k: TesseraGemm.kc + 44, transposeA: true, transposeB: true, alpha: 1.5, beta: 1, pad: 2)
        let a = test.a, b = test.b
        var outputs: [[Float]] = []
        for isa in [TesseraGemm.ISA.avx512, .avx2] {
            var c = test.c
            c.withUnsafeMutableBufferPointer { out in
                TesseraGemm.gemm(isa: isa, transposeA: true, transposeB: true, m: test.m, n: test.n, k: test.k, alpha: test.alpha,
                                 a: a, lda: test.lda, b: b, ldb: test.ldb, beta: test.beta, c: out.baseAddress!, ldc: test.ldc)
            }
            outputs.append(c)
            c = test.c  // and split over 2 threads with a shared panel of A (m < n)
            c.withUnsafeMutableBufferPointer { out in
                TesseraGemm.gemm(isa: isa, parts: 2, transposeA: true, transposeB: true, m: test.m, n: test.n, k: test.k, alpha: test.alpha,
                                 a: a, lda: test.lda, b: b, ldb: test.ldb, beta: test.beta, c: out.baseAddress!, ldc: test.ldc)
            }
            outputs.append(c)
        }
        for output in outputs.dropFirst() { #expect(output.map(\.bitPattern) == outputs[0].map(\.bitPattern)) }
    }

    @Test func alphaZeroScalesCWithoutReadingInputs() {
        var c: [Float] = [1, 2, 3, 4]
        let a: [Float] = [.nan, .infinity], b: [Float] = [.nan, 1]
        Matmul.gemm(transposeA: false, transposeB: false, m: 2, n: 2, k: 1, alpha: 0, a: a, lda: 1, b: b, ldb: 2, beta: 2, c: &c, ldc: 2)
        #expect(c == [2, 4, 6, 8])
    }

    @Test func instructionSetOverrideIsCheckedAgainstTheCPU() throws {
        #expect(try TesseraGemm.resolveISA(environment: nil, features: []) == .portable)
        #expect(try TesseraGemm.resolveISA(environment: "PORTABLE", features: CPUInfo.current.features) == .portable)
        #expect(throws: GemmError.unknownISA("sse9")) { try TesseraGemm.resolveISA(environment: "sse9", features: []) }
        #if arch(x86_64)
        #expect(try TesseraGemm.resolveISA(environment: nil, features: [.avx, .avx2, .fma]) == .avx2)
        #expect(throws: GemmError.self) { try TesseraGemm.resolveISA(environment: "avx512", features: [.avx2, .fma]) }
        #endif
    }

    /// `kernels.gemm: auto`: OpenBLAS only when its core is as wide as Tessera's widest kernel.
    @Test func autoTakesOpenBLASOnlyWhenItsCoreIsAsWide() {
        #if arch(x86_64)
        let avx512: CPUFeatures = [.avx, .avx2, .fma, .avx512], avx2: CPUFeatures = [.avx, .avx2, .fma]
        #expect(GemmImplementation.automatic(openBLASCore: "Haswell", features: avx512) == .tessera)
        #expect(GemmImplementation.automatic(openBLASCore: "Zen", features: avx512) == .tessera)
        #expect(GemmImplementation.automatic(openBLASCore: "SkylakeX", features: avx512) == .openblas)
        #expect(GemmImplementation.automatic(openBLASCore: "cooperlake", features: avx512.union(.avx512bf16)) == .openblas)
        #expect(GemmImplementation.automatic(openBLASCore: "Haswell", features: avx2) == .openblas)
        #expect(GemmImplementation.automatic(openBLASCore: "Prescott", features: avx2) == .tessera)
        #endif
        #expect(GemmImplementation.automatic(openBLASCore: "NoSuchCore", features: []) == .tessera)
        #expect(GemmImplementation.configured("openblas") == .openblas && GemmImplementation.configured("tessera") == .tessera)
        #expect(GemmImplementation.configured("auto") != nil && GemmImplementation.configured("fast") == nil)
    }
}
