import Testing
import Kernels
import _TestSupport

/// The discrete Mamba-2 mixer's three forms — chunked scan, materialised matrix, recurrent step —
/// against each other and against the Float64 twins written from the definitions.
@Suite struct SSDScanTests {
    /// Sizes of one case: batch, length, heads, head dim P, state size N, chunk.
    struct Case: CustomStringConvertible, Sendable {
        let batch: Int, length: Int, heads: Int, headDim: Int, stateSize: Int, chunk: Int
        var description: String { "B\(batch) T\(length) H\(heads) P\(headDim) N\(stateSize) chunk \(chunk)" }
        var shape: Reference.SSDShape { .init(batch: batch, length: length, heads: heads, headDim: headDim, stateSize: stateSize) }
        var scan: SSDScan { SSDScan(batch: batch, length: length, heads: heads, headDim: headDim, stateSize: stateSize, chunkSize: chunk) }
        var rows: Int { batch * length }
    }

    /// Random operands, contiguous (the reference's layout) and packed as the mixer packs them:
    /// [x | B | C | 3 spare columns] in one matrix, A_log in a second one with 2 spare columns.
    struct Operands {
        let c: Case
        var x: [Float], b: [Float], cc: [Float], aLog: [Float], d: [Float]
        var packedWidth: Int { c.heads * (c.headDim + 2 * c.stateSize) + 3 }
        var aLogWidth: Int { c.heads + 2 }

        init(_ c: Case, seed: UInt64) {
            self.c = c
            x = Fixtures.randoms(c.rows * c.heads * c.headDim, seed: seed)
            b = Fixtures.randoms(c.rows * c.heads * c.stateSize, seed: seed + 1, scale: 0.7)
            cc = Fixtures.randoms(c.rows * c.heads * c.stateSize, seed: seed + 2, scale: 0.7)
            // A_log around −1 (a ≈ 0.7) with a wide spread: long and short memories both occur.
            aLog = Fixtures.randoms(c.rows * c.heads, seed: seed + 3, scale: 1.5).map { $0 - 1 }
            d = Fixtures.randoms(c.heads, seed: seed + 4)
        }

        func packed() -> (xbc: [Float], aLog: [Float]) {
            let (HP, HN) = (c.heads * c.headDim, c.heads * c.stateSize)
            var xbc = [Float](repeating: 99, count: c.rows * packedWidth)
            var a = [Float](repeating: 99, count: c.rows * aLogWidth)
            for r in 0..<c.rows {
                for i in 0..<HP { xbc[r * packedWidth + i] = x[r * HP + i] }
                for i in 0..<HN { xbc[r * packedWidth + HP + i] = b[r * HN + i]; xbc[r * packedWidth + HP + HN + i] = cc[r * HN + i] }
                for h in 0..<c.heads { a[r * aLogWidth + 1 + h] = aLog[r * c.heads + h] }
            }
            return (xbc, a)
        }
    }

    static let cases: [Case] = [
        Case(batch: 2, length: 1, heads: 2, headDim: 3, stateSize: 2, chunk: 4),
        Case(batch: 1, length: 7, heads: 2, headDim: 3, stateSize: 5, chunk: 3),
        Case(batch: 2, length: 13, heads: 3, headDim: 4, stateSize: 2, chunk: 5),
        Case(batch: 1, length: 16, heads: 1, headDim: 2, stateSize: 3, chunk: 16),
        Case(batch: 2, length: 9, heads: 2, headDim: 3, stateSize: 3, chunk: 64),
        Case(batch: 1, length: 31, heads: 2, headDim: 5, stateSize: 4, chunk: 7),
        Case(batch: 1, length: 40, heads: 1, headDim: 4, stateSize: 4, chunk: 1),
        Case(batch: 1, length: 150, heads: 2, headDim: 4, stateSize: 3, chunk: 64),
    ]

    /// Runs the fast forward on the packed operands: y, final states.
    static func chunked(_ o: Operands, threads: KernelThreads = .single) -> (y: [Float], final: [Float], chunkStates: [Float]) {
        let c = o.c, scan = c.scan, (HP, HN) = (c.heads * c.headDim, c.heads * c.stateSize)
        let (xbc, a) = o.packed()
        var y = [Float](repeating: .nan, count: c.rows * HP)
        var final = [Float](repeating: .nan, count: scan.finalStateCount)
        var states = [Float](repeating: .nan, count: scan.chunkStateCount)
        xbc.withUnsafeBufferPointer { p in
            a.withUnsafeBufferPointer { ap in
                scan.forward(x: StridedRows(p.baseAddress!, stride: o.packedWidth), b: StridedRows(p.baseAddress! + HP, stride: o.packedWidth),
                             c: StridedRows(p.baseAddress! + HP + HN, stride: o.packedWidth), aLog: StridedRows(ap.baseAddress! + 1, stride: o.aLogWidth),
                             d: o.d, y: &y, chunkStates: &states, finalStates: &final, threads: threads)
            }
        }
        return (y, final, states)
    }

    static func maxError(_ a: [Float], _ b: [Double]) -> Double {
        zip(a, b).map { abs(Double($0) - $1) / max(1, abs($1)) }.max() ?? 0
    }

    @Test(arguments: cases)
    func chunkedScanMatchesTheRecurrenceAndTheMaterialisedMatrix(c: Case) {
        let o = Operands(c, seed: 11)
        let reference = Reference.ssdRecurrent(c.shape, x: o.x.doubles, b: o.b.doubles, c: o.cc.doubles, aLog: o.aLog.doubles, d: o.d.doubles)
        let fast = Self.chunked(o)
        #expect(Self.maxError(fast.y, reference.y) < 2e-5, "chunked y vs Float64 recurrence, \(c)")
        #expect(Self.maxError(fast.final, reference.states) < 2e-5, "final states, \(c)")
        // The materialised matrix: against its Float64 definition, and M x against the chunked y.
        let matrixReference = Reference.ssdMixingMatrix(c.shape, b: o.b.doubles, c: o.cc.doubles, aLog: o.aLog.doubles, d: o.d.doubles)
        let m = Self.matrix(o)
        #expect(Self.maxError(m, matrixReference) < 2e-5, "mixing matrix, \(c)")
        let (T, H, P) = (c.length, c.heads, c.headDim)
        var applied = [Double](repeating: 0, count: c.rows * H * P)
        for s in 0..<c.batch { for h in 0..<H { for l in 0..<T { for p in 0..<P {
            var sum = 0.0
            for j in 0..<T { sum += Double(m[((s * H + h) * T + l) * T + j]) * Double(o.x[((s * T + j) * H + h) * P + p]) }
            applied[((s * T + l) * H + h) * P + p] = sum
        } } } }
        #expect(Self.maxError(fast.y, applied) < 2e-5, "M x vs chunked y, \(c)")
        for s in 0..<c.batch { for h in 0..<H { for l in 0..<T { for j in (l + 1)..<max(T, l + 1) {
            #expect(m[((s * H + h) * T + l) * T + j] == 0)
        } } } }
    }

    static func matrix(_ o: Operands, withSkip: Bool = true) -> [Float] {
        let c = o.c, (HP, HN) = (c.heads * c.headDim, c.heads * c.stateSize)
        let (xbc, a) = o.packed()
        var m = [Float](repeating: .nan, count: c.batch * c.heads * c.length * c.length)
        xbc.withUnsafeBufferPointer { p in
            a.withUnsafeBufferPointer { ap in
                o.d.withUnsafeBufferPointer { d in
                    c.scan.mixingMatrix(b: StridedRows(p.baseAddress! + HP, stride: o.packedWidth),
                                        c: StridedRows(p.baseAddress! + HP + HN, stride: o.packedWidth),
                                        aLog: StridedRows(ap.baseAddress! + 1, stride: o.aLogWidth), d: withSkip ? d.baseAddress! : nil,
                                        matrix: &m, threads: KernelThreads(3))
                }
            }
        }
        return m
    }

    /// Generation's form: one position at a time from a zero state gives the chunked outputs.
    @Test(arguments: cases)
    func recurrentStepsReproduceTheChunkedScan(c: Case) {
        let o = Operands(c, seed: 21)
        let fast = Self.chunked(o)
        let (H, P, N, T) = (c.heads, c.headDim, c.stateSize, c.length)
        var states = [Float](repeating: 0, count: c.batch * H * N * P)
        var stepped = [Float](repeating: 0, count: c.rows * H * P)
        for t in 0..<T {
            // Row s of each operand is sample s at position t.
            var x: [Float] = [], b: [Float] = [], cc: [Float] = [], a: [Float] = []
            for s in 0..<c.batch {
                let r = s * T + t
                x += o.x[(r * H * P)..<((r + 1) * H * P)]
                b += o.b[(r * H * N)..<((r + 1) * H * N)]
                cc += o.cc[(r * H * N)..<((r + 1) * H * N)]
                a += o.aLog[(r * H)..<((r + 1) * H)]
            }
            var y = [Float](repeating: 0, count: c.batch * H * P)
            x.withUnsafeBufferPointer { xp in b.withUnsafeBufferPointer { bp in cc.withUnsafeBufferPointer { cp in a.withUnsafeBufferPointer { ap in
                SSDScan.step(x: StridedRows(xp.baseAddress!, stride: H * P), b: StridedRows(bp.baseAddress!, stride: H * N),
                             c: StridedRows(cp.baseAddress!, stride: H * N), aLog: StridedRows(ap.baseAddress!, stride: H), d: o.d,
                             states: &states, y: &y, batch: c.batch, heads: H, headDim: P, stateSize: N)
            } } } }
            for s in 0..<c.batch { for i in 0..<(H * P) { stepped[(s * T + t) * H * P + i] = y[s * H * P + i] } }
        }
        #expect(Self.maxError(stepped, fast.y.doubles) < 2e-5, "step by step vs chunked, \(c)")
        #expect(Self.maxError(states, fast.final.doubles) < 2e-5, "state after the last step vs chunked final state, \(c)")
    }

    /// Every (sample, head) is computed by the same code whatever the thread count.
    @Test func resultsDoNotDependOnTheThreadCount() {
        let o = Operands(Case(batch: 3, length: 23, heads: 3, headDim: 4, stateSize: 3, chunk: 6), seed: 31)
        let one = Self.chunked(o, threads: .single), four = Self.chunked(o, threads: KernelThreads(4))
        #expect(one.y == four.y && one.final == four.final)
        let probe = Fixtures.randoms(one.y.count, seed: 32)
        #expect(Self.gradients(o, dY: probe, threads: .single) == Self.gradients(o, dY: probe, threads: KernelThreads(4)))
    }

    /// Fast backward: [dx, dB, dC, dA_log, dD] in the contiguous layouts.
    static func gradients(_ o: Operands, dY: [Float], threads: KernelThreads = .single) -> [Float] {
        let c = o.c, (HP, HN, H) = (c.heads * c.headDim, c.heads * c.stateSize, c.heads)
        let (xbc, a) = o.packed()
        let states = Self.chunked(o).chunkStates
        var dxbc = [Float](repeating: .nan, count: xbc.count), dA = [Float](repeating: .nan, count: a.count)
        var dD = [Float](repeating: 0, count: H)
        xbc.withUnsafeBufferPointer { p in
            a.withUnsafeBufferPointer { ap in
                dxbc.withUnsafeMutableBufferPointer { dp in
                    dA.withUnsafeMutableBufferPointer { dap in
                        let w = o.packedWidth
                        c.scan.backward(x: StridedRows(p.baseAddress!, stride: w), b: StridedRows(p.baseAddress! + HP, stride: w),
                                        c: StridedRows(p.baseAddress! + HP + HN, stride: w), aLog: StridedRows(ap.baseAddress! + 1, stride: o.aLogWidth),
                                        d: o.d, chunkStates: states, dY: dY,
                                        dx: MutableStridedRows(dp.baseAddress!, stride: w), dB: MutableStridedRows(dp.baseAddress! + HP, stride: w),
                                        dC: MutableStridedRows(dp.baseAddress! + HP + HN, stride: w),
                                        dALog: MutableStridedRows(dap.baseAddress! + 1, stride: o.aLogWidth), dD: &dD, threads: threads)
                    }
                }
            }
        }
        return unpacked(o, dxbc: dxbc, dA: dA) + dD
    }

    /// [dx, dB, dC, dA_log] in the contiguous layouts from the packed gradients; the spare columns stay NaN.
    static func unpacked(_ o: Operands, dxbc: [Float], dA: [Float]) -> [Float] {
        let c = o.c, (HP, HN, H) = (c.heads * c.headDim, c.heads * c.stateSize, c.heads)
        var dx: [Float] = [], db: [Float] = [], dc: [Float] = [], da: [Float] = []
        for r in 0..<c.rows {
            let row = r * o.packedWidth
            dx += dxbc[row..<(row + HP)]
            db += dxbc[(row + HP)..<(row + HP + HN)]
            dc += dxbc[(row + HP + HN)..<(row + HP + 2 * HN)]
            da += dA[(r * o.aLogWidth + 1)..<(r * o.aLogWidth + 1 + H)]
            #expect(dxbc[(row + HP + 2 * HN)..<(row + o.packedWidth)].allSatisfy { $0.isNaN }, "spare columns untouched")
        }
        return dx + db + dc + da
    }

    static let awkward: [Case] = [
        Case(batch: 1, length: 7, heads: 2, headDim: 3, stateSize: 2, chunk: 3),
        Case(batch: 2, length: 11, heads: 1, headDim: 2, stateSize: 3, chunk: 5),
        Case(batch: 1, length: 5, heads: 2, headDim: 2, stateSize: 2, chunk: 8),
        Case(batch: 1, length: 13, heads: 1, headDim: 3, stateSize: 2, chunk: 13),
        Case(batch: 1, length: 9, heads: 1, headDim: 2, stateSize: 2, chunk: 2),
    ]

    /// ∂(Σ y ⊙ probe) with respect to x, B, C, A_log and D against central differences of the
    /// Float64 recurrence, on odd lengths, prime chunks and a chunk longer than the sequence.
    @Test(arguments: awkward)
    func chunkedBackwardMatchesFiniteDifferences(c: Case) {
        let o = Operands(c, seed: 41)
        let probe = Fixtures.randoms(c.rows * c.heads * c.headDim, seed: 42)
        let analytic = Self.gradients(o, dY: probe)
        let counts = [o.x.count, o.b.count, o.cc.count, o.aLog.count, o.d.count]
        let all = (o.x + o.b + o.cc + o.aLog + o.d).doubles
        let numeric = GradientCheck.numeric(at: all) { v in
            var parts: [[Double]] = [], at = 0
            for n in counts { parts.append(Array(v[at..<(at + n)])); at += n }
            let y = Reference.ssdRecurrent(c.shape, x: parts[0], b: parts[1], c: parts[2], aLog: parts[3], d: parts[4]).y
            return GradientCheck.dot(y, probe.doubles)
        }
        var at = 0
        for (name, n) in zip(["x", "B", "C", "A_log", "D"], counts) {
            let error = GradientCheck.relativeError(Array(analytic[at..<(at + n)]), Array(numeric[at..<(at + n)]))
            #expect(error < 1e-3, "d\(name): relative error \(error), \(c)")
            at += n
        }
    }

    /// ∂(Σ M ⊙ probe) with respect to B, C, A_log and D (what MOHAWK's first stage trains).
    @Test(arguments: [awkward[0], awkward[1], awkward[3]])
    func mixingMatrixBackwardMatchesFiniteDifferences(c: Case) {
        let o = Operands(c, seed: 51)
        let (T, H, HP, HN) = (c.length, c.heads, c.heads * c.headDim, c.heads * c.stateSize)
        let probe = Fixtures.randoms(c.batch * H * T * T, seed: 52)
        let (xbc, a) = o.packed()
        var dxbc = [Float](repeating: 0, count: xbc.count), dA = [Float](repeating: 0, count: a.count)
        var dD = [Float](repeating: 0, count: H)
        xbc.withUnsafeBufferPointer { p in
            a.withUnsafeBufferPointer { ap in
                dxbc.withUnsafeMutableBufferPointer { dp in
                    dA.withUnsafeMutableBufferPointer { dap in
                        let w = o.packedWidth
                        c.scan.mixingMatrixBackward(b: StridedRows(p.baseAddress! + HP, stride: w), c: StridedRows(p.baseAddress! + HP + HN, stride: w),
                                                    aLog: StridedRows(ap.baseAddress! + 1, stride: o.aLogWidth), dMatrix: probe,
                                                    dB: MutableStridedRows(dp.baseAddress! + HP, stride: w),
                                                    dC: MutableStridedRows(dp.baseAddress! + HP + HN, stride: w),
                                                    dALog: MutableStridedRows(dap.baseAddress! + 1, stride: o.aLogWidth), dD: &dD, threads: KernelThreads(2))
                    }
                }
            }
        }
        var analytic: [Float] = []
        for r in 0..<c.rows { analytic += dxbc[(r * o.packedWidth + HP)..<(r * o.packedWidth + HP + HN)] }
        for r in 0..<c.rows { analytic += dxbc[(r * o.packedWidth + HP + HN)..<(r * o.packedWidth + HP + 2 * HN)] }
        for r in 0..<c.rows { analytic += dA[(r * o.aLogWidth + 1)..<(r * o.aLogWidth + 1 + H)] }
        analytic += dD
        let counts = [o.b.count, o.cc.count, o.aLog.count, o.d.count]
        let numeric = GradientCheck.numeric(at: (o.b + o.cc + o.aLog + o.d).doubles) { v in
            var parts: [[Double]] = [], at = 0
            for n in counts { parts.append(Array(v[at..<(at + n)])); at += n }
            return GradientCheck.dot(Reference.ssdMixingMatrix(c.shape, b: parts[0], c: parts[1], aLog: parts[2], d: parts[3]), probe.doubles)
        }
        var at = 0
        for (name, n) in zip(["B", "C", "A_log", "D"], counts) {
            let error = GradientCheck.relativeError(Array(analytic[at..<(at + n)]), Array(numeric[at..<(at + n)]))
            #expect(error < 1e-3, "d\(name) of M: relative error \(error), \(c)")
            at += n
        }
    }

    /// The causal convolution: forward against its twin, the step form against the forward,
    /// the backward against finite differences (x strided inside a wider matrix).
    @Test(arguments: [(2, 7, 5, 4), (1, 3, 3, 4), (2, 9, 4, 1), (1, 6, 2, 3)])
    func causalConvolutionForwardStepAndBackward(batch: Int, length: Int, channels: Int, width: Int) {
        let rows = batch * length, stride = channels + 2
        let x = Fixtures.randoms(rows * channels, seed: 61), w = Fixtures.randoms(channels * width, seed: 62)
        let bias = Fixtures.randoms(channels, seed: 63)
        var wide = [Float](repeating: 7, count: rows * stride)
        for r in 0..<rows { for ch in 0..<channels { wide[r * stride + 1 + ch] = x[r * channels + ch] } }
        var y = [Float](repeating: .nan, count: rows * channels)
        wide.withUnsafeBufferPointer { p in
            y.withUnsafeMutableBufferPointer { yp in
                DepthwiseCausalConv.forward(x: StridedRows(p.baseAddress! + 1, stride: stride), weight: w, bias: bias,
                                            y: MutableStridedRows(yp.baseAddress!, stride: channels), batch: batch, length: length,
                                            channels: channels, width: width, threads: KernelThreads(3))
            }
        }
        let reference = Reference.causalConv(x.doubles, weight: w.doubles, bias: bias.doubles, batch: batch, length: length,
                                             channels: channels, width: width)
        #expect(Self.maxError(y, reference) < 1e-6)
        // Steps, one sample at a time from an empty window: the same sums in the same order.
        for s in 0..<batch {
            var window = [Float](repeating: 0, count: channels * (width - 1))
            for t in 0..<length {
                var out = [Float](repeating: 0, count: channels)
                let r = s * length + t
                DepthwiseCausalConv.step(x: Array(x[(r * channels)..<((r + 1) * channels)]), window: &window, weight: w, bias: bias,
                                         y: &out, channels: channels, width: width)
                #expect(out == Array(y[(r * channels)..<((r + 1) * channels)]))
            }
        }
        let probe = Fixtures.randoms(rows * channels, seed: 64)
        var dWide = [Float](repeating: 5, count: rows * stride), dW = [Float](repeating: 0, count: w.count)
        var dBias = [Float](repeating: 0, count: channels)
        wide.withUnsafeBufferPointer { p in
            probe.withUnsafeBufferPointer { dp in
                dWide.withUnsafeMutableBufferPointer { dxp in
                    DepthwiseCausalConv.backward(x: StridedRows(p.baseAddress! + 1, stride: stride), weight: w,
                                                 dy: StridedRows(dp.baseAddress!, stride: channels),
                                                 dx: MutableStridedRows(dxp.baseAddress! + 1, stride: stride), dWeight: &dW, dBias: &dBias,
                                                 batch: batch, length: length, channels: channels, width: width, threads: KernelThreads(2))
                }
            }
        }
        var dx: [Float] = []
        for r in 0..<rows { dx += dWide[(r * stride + 1)..<(r * stride + 1 + channels)] }
        #expect(dWide.enumerated().allSatisfy { i, v in (i % stride >= 1 && i % stride <= channels) || v == 5 })
        let numeric = GradientCheck.numeric(at: (x + w + bias).doubles) { v in
            let y = Reference.causalConv(Array(v[0..<x.count]), weight: Array(v[x.count..<(x.count + w.count)]),
                                         bias: Array(v[(x.count + w.count)...]), batch: batch, length: length, channels: channels, width: width)
            return GradientCheck.dot(y, probe.doubles)
        }
        #expect(GradientCheck.relativeError(dx + dW + dBias, numeric) < 1e-4)
    }
}
