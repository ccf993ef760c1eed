import CAdamW
import Testing
import Kernels
import _TestSupport

@Suite struct OptimizerTests {
    /// Two AdamW steps against the formula of torch.optim.AdamW, computed in Float64 (`Reference.adamW`).
    @Test func adamWFollowsTorchFormula() {
        let optimizer = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        var p: [Float] = [0.5, -1.0, 2.0], m: [Float] = [0, 0, 0], v: [Float] = [0, 0, 0]
        let start = p.doubles
        let gradients: [[Float]] = [[0.1, -0.2, 0.3], [-0.05, 0.4, 0.0]]
        for (index, g) in gradients.enumerated() {
            optimizer.update(parameters: &p, gradients: g, m: &m, v: &v, count: 3, step: index + 1, learningRate: 0.01, decay: true)
        }
        let want = Reference.adamW(start, gradients: gradients.map(\.doubles), lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        #expect(maxRelativeError(p, want) < 1e-6)
    }

    @Test func noDecayLeavesZeroGradientParametersAlone() {
        var p: [Float] = [1, 2], m: [Float] = [0, 0], v: [Float] = [0, 0]
        AdamW().update(parameters: &p, gradients: [0, 0], m: &m, v: &v, count: 2, step: 1, learningRate: 0.1, decay: false)
        #expect(p == [1, 2])
    }

    /// Clipping folded into the update gives the same floats as scaling the gradients first
    /// (on a length with a vector body and a tail), and leaves the gradients unscaled.
    @Test func gradientScaleEqualsScalingFirst() {
        let count = 37, scale: Float = 0.3712
        let g = Fixtures.randoms(count, seed: 21)
        var (p1, m1, v1) = (Fixtures.randoms(count, seed: 22), [Float](repeating: 0.01, count: count), [Float](repeating: 0.02, count: count))
        var (p2, m2, v2) = (p1, m1, v1)
        AdamW().update(parameters: &p1, gradients: g.map { $0 * scale }, m: &m1, v: &v1, count: count, step: 3, learningRate: 0.01, decay: true)
        var g2 = g
        g2.withUnsafeMutableBufferPointer { gp in
            AdamW().update(parameters: &p2, gradients: gp.baseAddress!, m: &m2, v: &v2, count: count, step: 3, learningRate: 0.01,
                           decay: true, gradientScale: scale)
        }
        #expect(p1 == p2 && m1 == m2 && v1 == v2)
        #expect(g2 == g)
    }

    /// The update before it moved to C (Swift SIMD8 lanes, then a scalar tail), kept as the
    /// twin the C kernel must match bit for bit.
    static func swiftUpdate(_ rule: AdamW, p: inout [Float], g: [Float], m: inout [Float], v: inout [Float], step t: Int,
                            lr: Float, decay: Bool, scale: Float) {
        let correction1 = 1 - pow(Double(rule.beta1), Double(t)), correction2 = 1 - pow(Double(rule.beta2), Double(t))
        let stepSize = lr / Float(correction1), rootCorrection2 = Float(correction2.squareRoot())
        let shrink = decay ? 1 - lr * rule.weightDecay : 1
        let (b1, b2, e) = (rule.beta1, rule.beta2, rule.eps)
        var i = 0
        while i + 8 <= p.count {
            let gi = SIMD8<Float>(g[i..<i + 8]) * scale
            let mi = b1 * SIMD8<Float>(m[i..<i + 8]) + (1 - b1) * gi
            let vi = b2 * SIMD8<Float>(v[i..<i + 8]) + (1 - b2) * gi * gi
            let pi = SIMD8<Float>(p[i..<i + 8]) * shrink - stepSize * mi / (vi.squareRoot() / rootCorrection2 + e)
            for j in 0..<8 { (m[i + j], v[i + j], p[i + j]) = (mi[j], vi[j], pi[j]) }
            i += 8
        }
        for j in i..<p.count {
            let gj = g[j] * scale
            m[j] = b1 * m[j] + (1 - b1) * gj
            v[j] = b2 * v[j] + (1 - b2) * gj * gj
            p[j] = p[j] * shrink - stepSize * m[j] / (v[j].squareRoot() / rootCorrection2 + e)
        }
    }

    /// Three updates with the C kernel (split across 1, 2, 3 threads; lengths with and without
    /// a 16-lane tail, past the 65,536-element chunk) bitwise equal to the Swift twin, with
    /// gradients over eight decades, zeros, a clipping scale, with and without decay.
    @Test(arguments: [0, 1, 15, 16, 17, 47, 65_536 * 3 + 13])
    func cKernelEqualsSwiftExpression(count: Int) {
        let rule = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        let g = Fixtures.randoms(count, seed: UInt64(count) + 5).enumerated().map { $0 % 7 == 0 ? 0 : $1 * Float(pow(10.0, Double($0 % 9) - 6)) }
        for threads in 1...3 {
            for decay in [true, false] {
                var p = Fixtures.randoms(count, seed: 41), m = [Float](repeating: 0, count: count), v = m
                var (p2, m2, v2) = (p, m, v)
                for step in 1...3 {
                    let scale: Float = step == 2 ? 0.4137 : 1
                    Self.swiftUpdate(rule, p: &p, g: g, m: &m, v: &v, step: step, lr: 3e-3, decay: decay, scale: scale)
                    rule.update(parameters: &p2, gradients: g, m: &m2, v: &v2, count: count, step: step, learningRate: 3e-3,
                                decay: decay, gradientScale: scale, threads: KernelThreads(threads))
                }
                #expect(p.map(\.bitPattern) == p2.map(\.bitPattern) && m.map(\.bitPattern) == m2.map(\.bitPattern)
                        && v.map(\.bitPattern) == v2.map(\.bitPattern), "threads \(threads) decay \(decay)")
            }
        }
    }

    /// The kernel's portable path (every lane scalar) gives the AVX-512 path's bits (run where
    /// the CPU has AVX-512F; elsewhere only the portable path exists).
    @Test func portablePathEqualsVectorPath() throws {
        try #require(CPUInfo.current.features.contains(.avx512))
        let count = 1_003
        let g = Fixtures.randoms(count, seed: 9).map { $0 * 3e-4 }
        var p = Fixtures.randoms(count, seed: 10), m = Fixtures.randoms(count, seed: 11).map { $0 * 1e-3 }
        var v = Fixtures.randoms(count, seed: 12).map { $0 * $0 * 1e-6 }
        var (p2, m2, v2) = (p, m, v)
        tessera_adamw_update(&p, g, &m, &v, count, 0.9, 0.95, 1e-8, 0.77, 0.9997, 2e-3, 0.31, 0)
        tessera_adamw_update(&p2, g, &m2, &v2, count, 0.9, 0.95, 1e-8, 0.77, 0.9997, 2e-3, 0.31, 1)
        #expect(p.map(\.bitPattern) == p2.map(\.bitPattern) && m == m2 && v == v2)
    }

    @Test func clippingScalesToTheMaximumNorm() {
        let g: [Float] = [3, 4]
        let norm = GradientClipping.sumOfSquares(g, count: 2).squareRoot()
        #expect(norm == 5)
        #expect(abs(GradientClipping.scale(norm: norm, maxNorm: 1) - 0.2) < 1e-6)
        #expect(GradientClipping.scale(norm: 0.5, maxNorm: 1) == 1)
    }

    /// The vectorised sum of squares against a Float64 sum, on counts around its 32-lane step
    /// and its 4,096-element chunks (and empty), with values of mixed sign and scale.
    @Test(arguments: [0, 1, 7, 31, 33, 4_095, 4_097, 10_007])
    func sumOfSquaresMatchesFloat64(count: Int) {
        let g = Fixtures.randoms(count, seed: UInt64(count) + 11).enumerated().map { $1 * ($0 % 3 == 0 ? 100 : 0.01) }
        let exact = g.reduce(0.0) { $0 + Double($1) * Double($1) }
        let fast = GradientClipping.sumOfSquares(g, count: count)
        #expect(abs(fast - exact) <= 1e-6 * exact)
    }
}

import Foundation
