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
