import Foundation
import Testing
@testable import Models
import TensorCore
import _TestSupport

/// The whole MoE layer, router included, against central differences of the Float64 reference:
/// J = (1/N) Σ w · out + aux · balance + z · zLoss for a fixed probe w, so backward runs with
/// dOut = w / N and gradientScale = 1/N.
@Suite struct MoEGradientTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let label: String
        let spec: MoESpec
        var testDescription: String { label }
    }

    static let cases = [
        Case(label: "top-2 of 4, dropless", spec: MoESpec(experts: 4, topK: 2, expertHidden: 5, auxLossCoefficient: 0.2, zLossCoefficient: 0.1)),
        Case(label: "top-1 of 3, capacity 1.0", spec: MoESpec(experts: 3, topK: 1, expertHidden: 4, capacityFactor: 1, auxLossCoefficient: 0.2, zLossCoefficient: 0.1)),
        Case(label: "top-2 of 4, capacity 0.6", spec: MoESpec(experts: 4, topK: 2, expertHidden: 5, capacityFactor: 0.6, auxLossCoefficient: 0.2, zLossCoefficient: 0.1)),
    ]

    /// Bound per tensor as in ReferenceDecoderTests: max |analytic − numeric| ≤ 1e-6 + 1e-4 · max |numeric|.
    @Test(arguments: cases)
    func everyGradientOfTheLayerMatchesFiniteDifferences(_ c: Case) {
        let (rows, d) = (12, 6)
        let h = MoEHarness(c.spec, dModel: d, seed: 17)
        let x = Fixtures.randoms(rows * d, seed: 18), probe = Fixtures.randoms(rows * d, seed: 19)
        let result = h.forward(x, rows: rows)
        let dx = h.backward(probe.map { $0 / Float(rows) }, gradientScale: 1 / Float(rows))
        if c.spec.capacityFactor != nil { #expect(result.summary.droppedFraction > 0, "\(c.label): the capacity should drop pairs") }
        let reference = h.reference
        func objective(_ input: [Double], _ w: [String: [Double]]) -> Double {
            let r = reference.forward(input, rows: rows) { w[$0]! }
            return GradientCheck.dot(r.out, probe.doubles) / Double(rows)
                + c.spec.auxLossCoefficient * r.balance + c.spec.zLossCoefficient * r.zLoss
        }
        let weights = h.weights()
        let want = reference.forward(x.doubles, rows: rows) { weights[$0]! }
        #expect(maxRelativeError(result.out, want.out) < 1e-5, "\(c.label): outputs differ from the reference")
        #expect(abs(result.aux - c.spec.auxLossCoefficient * want.balance) < 1e-6 && abs(result.z - c.spec.zLossCoefficient * want.zLoss) < 1e-5)

        func check(_ name: String, _ analytic: [Float], _ numeric: [Double]) {
            let scale = numeric.map(abs).max()!
            let worst = zip(analytic, numeric).map { abs(Double($0) - $1) }.max()!
            #expect(worst <= 1e-6 + 1e-4 * scale, "\(c.label): gradient of \(name) off by \(worst) (max |g| \(scale))")
            #expect(scale > 1e-4, "\(c.label): \(name) barely affects J (max |g| = \(scale)); the check cannot see it")
        }
        check("x", dx, GradientCheck.numeric(at: x.doubles, h: 1e-6) { objective($0, weights) })
        for e in h.parameters.entries {
            var w = weights
            let numeric = GradientCheck.numeric(at: weights[e.name]!, h: 1e-6) { w[e.name] = $0; return objective(x.doubles, w) }
            if numeric.allSatisfy({ $0 == 0 }) {   // an expert that kept no pair under the capacity
                #expect(h.parameters.gradients.buffer[e.range].allSatisfy { $0 == 0 }, "\(c.label): \(e.name) got a gradient without tokens")
                continue
            }
            check(e.name, Array(h.parameters.gradients.buffer[e.range]), numeric)
        }
    }
}
