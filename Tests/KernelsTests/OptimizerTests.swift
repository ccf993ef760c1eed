import Testing
import Kernels
import _TestSupport

@Suite struct OptimizerTests {
    /// Two AdamW steps against the formula of torch.optim.AdamW, computed in Float64.
    @Test func adamWFollowsTorchFormula() {
        let optimizer = AdamW(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        var p: [Float] = [0.5, -1.0, 2.0], m: [Float] = [0, 0, 0], v: [Float] = [0, 0, 0]
        var pd = p.doubles, md = [0.0, 0, 0], vd = [0.0, 0, 0]
        let gradients: [[Float]] = [[0.1, -0.2, 0.3], [-0.05, 0.4, 0.0]]
        for (index, g) in gradients.enumerated() {
            let t = index + 1, lr = 0.01
            optimizer.update(parameters: &p, gradients: g, m: &m, v: &v, count: 3, step: t, learningRate: Float(lr), decay: true)
            for i in 0..<3 {
                pd[i] *= 1 - lr * 0.1
                md[i] = 0.9 * md[i] + 0.1 * Double(g[i])
                vd[i] = 0.95 * vd[i] + 0.05 * Double(g[i]) * Double(g[i])
                let mhat = md[i] / (1 - pow(0.9, Double(t))), vhat = vd[i] / (1 - pow(0.95, Double(t)))
                pd[i] -= lr * mhat / (vhat.squareRoot() + 1e-8)
            }
        }
        #expect(maxRelativeError(p, pd) < 1e-6)
    }

    @Test func noDecayLeavesZeroGradientParametersAlone() {
        var p: [Float] = [1, 2], m: [Float] = [0, 0], v: [Float] = [0, 0]
        AdamW().update(parameters: &p, gradients: [0, 0], m: &m, v: &v, count: 2, step: 1, learningRate: 0.1, decay: false)
        #expect(p == [1, 2])
    }

    @Test func clippingScalesToTheMaximumNorm() {
        let g: [Float] = [3, 4]
        let norm = GradientClipping.sumOfSquares(g, count: 2).squareRoot()
        #expect(norm == 5)
        #expect(abs(GradientClipping.scale(norm: norm, maxNorm: 1) - 0.2) < 1e-6)
        #expect(GradientClipping.scale(norm: 0.5, maxNorm: 1) == 1)
    }
}

import Foundation
