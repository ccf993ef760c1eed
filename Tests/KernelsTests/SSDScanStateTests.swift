import Foundation
import Testing
import Kernels
import _TestSupport

/// The pieces a sequence split over ranks needs (`SSDScan+State.swift`, the convolution's
/// `history`): the scan continued from a state and its gradient, against the Float64 recurrence
/// started from that state and central differences of it, on awkward sizes.
@Suite struct SSDScanStateTests {
    typealias Case = SSDScanTests.Case

    /// The packed operands' pointers, as the mixer passes them.
    struct Packed {
        let x: StridedRows, b: StridedRows, c: StridedRows, aLog: StridedRows
    }

    static func withPacked<R>(_ o: SSDScanTests.Operands, _ body: (Packed) -> R) -> R {
        let (HP, HN) = (o.c.heads * o.c.headDim, o.c.heads * o.c.stateSize)
        let (xbc, a) = o.packed()
        return xbc.withUnsafeBufferPointer { p in
            a.withUnsafeBufferPointer { ap in
                let w = o.packedWidth
                return body(Packed(x: StridedRows(p.baseAddress!, stride: w), b: StridedRows(p.baseAddress! + HP, stride: w),
                                   c: StridedRows(p.baseAddress! + HP + HN, stride: w), aLog: StridedRows(ap.baseAddress! + 1, stride: o.aLogWidth)))
            }
        }
    }

    /// y and the final states of the scan from `initial` (B, H, N, P): zero-start forward,
    /// then `addInitialStates`; final = exp(Σ log a) · initial + the zero-start final. Also the
    /// chunk states (what the backward takes).
    static func fromState(_ o: SSDScanTests.Operands, initial: [Float]) -> (y: [Float], final: [Float], chunkStates: [Float]) {
        let c = o.c, scan = c.scan, size = c.stateSize * c.headDim
        var y = [Float](repeating: .nan, count: c.rows * c.heads * c.headDim)
        var final = [Float](repeating: .nan, count: scan.finalStateCount)
        var states = [Float](repeating: .nan, count: scan.chunkStateCount)
        var decays = [Float](repeating: .nan, count: c.batch * c.heads)
        withPacked(o) { p in
            scan.forward(x: p.x, b: p.b, c: p.c, aLog: p.aLog, d: o.d, y: &y, chunkStates: &states, finalStates: &final, threads: KernelThreads(2))
            scan.totalLogDecay(aLog: p.aLog, into: &decays)
            scan.addInitialStates(c: p.c, aLog: p.aLog, initialStates: initial, y: &y, chunkStates: &states, threads: KernelThreads(3))
        }
        for item in 0..<(c.batch * c.heads) {
            for i in 0..<size { final[item * size + i] += exp(decays[item]) * initial[item * size + i] }
        }
        return (y, final, states)
    }

    @Test(arguments: SSDScanTests.cases)
    func scanFromAStateMatchesTheRecurrence(c: Case) {
        let o = SSDScanTests.Operands(c, seed: 71)
        let initial = Fixtures.randoms(c.batch * c.heads * c.stateSize * c.headDim, seed: 72)
        let reference = Reference.ssdRecurrent(c.shape, x: o.x.doubles, b: o.b.doubles, c: o.cc.doubles, aLog: o.aLog.doubles,
                                               d: o.d.doubles, initialStates: initial.doubles)
        let fast = Self.fromState(o, initial: initial)
        #expect(SSDScanTests.maxError(fast.y, reference.y) < 2e-5, "y from a state, \(c)")
        #expect(SSDScanTests.maxError(fast.final, reference.states) < 2e-5, "final states from a state, \(c)")
    }

    /// ∂(Σ y ⊙ probe + Σ final ⊙ probeF) with respect to x, B, C, A_log, D and the initial
    /// states: `backward` with `dInitialStates`, plus `addFinalStateGradient`, plus
    /// exp(Σ log a) · probeF for the initial states (what the sequence ranks combine).
    @Test(arguments: SSDScanTests.awkward + [Case(batch: 2, length: 6, heads: 2, headDim: 2, stateSize: 3, chunk: 4)])
    func gradientsFromAStateMatchFiniteDifferences(c: Case) {
        let o = SSDScanTests.Operands(c, seed: 81), scan = c.scan
        let (HP, HN, H, size) = (c.heads * c.headDim, c.heads * c.stateSize, c.heads, c.stateSize * c.headDim)
        let initial = Fixtures.randoms(c.batch * H * size, seed: 82)
        let probe = Fixtures.randoms(c.rows * HP, seed: 83), probeFinal = Fixtures.randoms(c.batch * H * size, seed: 84)
        let states = Self.fromState(o, initial: initial).chunkStates
        var dxbc = [Float](repeating: .nan, count: c.rows * o.packedWidth), dA = [Float](repeating: .nan, count: c.rows * o.aLogWidth)
        var dD = [Float](repeating: 0, count: H), dInitial = [Float](repeating: .nan, count: initial.count)
        var decays = [Float](repeating: 0, count: c.batch * H)
        Self.withPacked(o) { p in
            dxbc.withUnsafeMutableBufferPointer { dp in
                dA.withUnsafeMutableBufferPointer { dap in
                    let w = o.packedWidth
                    let (dx, dB) = (MutableStridedRows(dp.baseAddress!, stride: w), MutableStridedRows(dp.baseAddress! + HP, stride: w))
                    let dALog = MutableStridedRows(dap.baseAddress! + 1, stride: o.aLogWidth)
                    scan.backward(x: p.x, b: p.b, c: p.c, aLog: p.aLog, d: o.d, chunkStates: states, dY: probe, dx: dx, dB: dB,
                                  dC: MutableStridedRows(dp.baseAddress! + HP + HN, stride: w), dALog: dALog, dD: &dD,
                                  dInitialStates: &dInitial, threads: KernelThreads(2))
                    scan.addFinalStateGradient(x: p.x, b: p.b, aLog: p.aLog, chunkStates: states, dFinalStates: probeFinal,
                                               dx: dx, dB: dB, dALog: dALog, threads: KernelThreads(3))
                }
            }
            scan.totalLogDecay(aLog: p.aLog, into: &decays)
        }
        for item in 0..<(c.batch * H) {
            for i in 0..<size { dInitial[item * size + i] += exp(decays[item]) * probeFinal[item * size + i] }
        }
        let analytic = SSDScanTests.unpacked(o, dxbc: dxbc, dA: dA) + dD + dInitial
        let counts = [o.x.count, o.b.count, o.cc.count, o.aLog.count, o.d.count, initial.count]
        let numeric = GradientCheck.numeric(at: (o.x + o.b + o.cc + o.aLog + o.d + initial).doubles) { v in
            var parts: [[Double]] = [], at = 0
            for n in counts { parts.append(Array(v[at..<(at + n)])); at += n }
            let r = Reference.ssdRecurrent(c.shape, x: parts[0], b: parts[1], c: parts[2], aLog: parts[3], d: parts[4], initialStates: parts[5])
            return GradientCheck.dot(r.y, probe.doubles) + GradientCheck.dot(r.states, probeFinal.doubles)
        }
        var at = 0
        for (name, n) in zip(["x", "B", "C", "A_log", "D", "initial states"], counts) {
            let error = GradientCheck.relativeError(Array(analytic[at..<(at + n)]), Array(numeric[at..<(at + n)]))
            #expect(error < 1e-3, "d\(name): relative error \(error), \(c)")
            at += n
        }
    }

    /// The convolution with `history` (the W − 1 inputs before each sample) equals the plain
    /// convolution over [history; x] cut to x's rows; its backward (dx, taps, bias, history)
    /// matches central differences.
    @Test(arguments: [(2, 7, 5, 4), (1, 2, 3, 4), (2, 5, 4, 2), (1, 3, 2, 1)])
    func convolutionWithHistory(batch: Int, length: Int, channels: Int, width: Int) {
        let (rows, kept) = (batch * length, width - 1)
        let x = Fixtures.randoms(rows * channels, seed: 91), w = Fixtures.randoms(channels * width, seed: 92)
        let bias = Fixtures.randoms(channels, seed: 93), history = Fixtures.randoms(batch * kept * channels, seed: 94)
        func reference(_ x: [Double], _ w: [Double], _ bias: [Double], _ history: [Double]) -> [Double] {
            var joined: [Double] = []
            for s in 0..<batch {
                let before: Int = s * kept * channels, at: Int = s * length * channels
                joined += history[before..<(before + kept * channels)]
                joined += x[at..<(at + length * channels)]
            }
            let long: Int = length + kept
            let y = Reference.causalConv(joined, weight: w, bias: bias, batch: batch, length: long, channels: channels, width: width)
            var out: [Double] = []
            for s in 0..<batch {
                let from: Int = (s * long + kept) * channels
                out += y[from..<(from + length * channels)]
            }
            return out
        }
        var y = [Float](repeating: .nan, count: rows * channels)
        DepthwiseCausalConv.forward(x: StridedRows(x, stride: channels), weight: w, bias: bias, y: MutableStridedRows(&y, stride: channels),
                                    batch: batch, length: length, channels: channels, width: width, history: history, threads: KernelThreads(2))
        #expect(SSDScanTests.maxError(y, reference(x.doubles, w.doubles, bias.doubles, history.doubles)) < 1e-6)
        let probe = Fixtures.randoms(rows * channels, seed: 95)
        var dx = [Float](repeating: .nan, count: rows * channels), dW = [Float](repeating: 0, count: w.count)
        var dBias = [Float](repeating: 0, count: channels), dHistory = [Float](repeating: .nan, count: history.count)
        DepthwiseCausalConv.backward(x: StridedRows(x, stride: channels), weight: w, dy: StridedRows(probe, stride: channels),
                                     dx: MutableStridedRows(&dx, stride: channels), dWeight: &dW, dBias: &dBias, batch: batch,
                                     length: length, channels: channels, width: width, history: history, dHistory: &dHistory,
                                     threads: KernelThreads(2))
        let counts = [x.count, w.count, bias.count]
        let numeric = GradientCheck.numeric(at: (x + w + bias + history).doubles) { v in
            let (a, b, c) = (counts[0], counts[0] + counts[1], counts[0] + counts[1] + counts[2])
            return GradientCheck.dot(reference(Array(v[0..<a]), Array(v[a..<b]), Array(v[b..<c]), Array(v[c...])), probe.doubles)
        }
        #expect(GradientCheck.relativeError(dx + dW + dBias + dHistory, numeric) < 1e-4)
    }
}
