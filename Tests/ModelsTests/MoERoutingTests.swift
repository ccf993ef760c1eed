import Foundation
import Testing
@testable import Models
import TensorCore
import _TestSupport

/// The router (softmax → top-k → renormalise) and the auxiliary losses' values and gradients.
@Suite struct MoERoutingTests {
    @Test(arguments: [1, 2])
    func renormalisedGatesSumToOneAndEqualTheSoftmaxOverTheTopKLogits(topK: Int) {
        let (rows, E) = (25, 6)
        let logits = Fixtures.randoms(rows * E, seed: 9, scale: 2)
        var router = TopKRouter(experts: E, topK: topK)
        logits.withUnsafeBufferPointer { router.route(logits: $0.baseAddress!, rows: rows) }
        for t in 0..<rows {
            let row = Array(logits[(t * E)..<((t + 1) * E)]).doubles
            let expected = Array((0..<E).sorted { row[$0] > row[$1] }.prefix(topK))
            let chosen = Array(router.choices[(t * topK)..<((t + 1) * topK)])
            #expect(chosen == expected, "token \(t): chose \(chosen), the largest logits are at \(expected)")
            let gates = Array(router.gates[(t * topK)..<((t + 1) * topK)]).doubles
            #expect(abs(gates.reduce(0, +) - 1) < 1e-6, "token \(t): gates \(gates) do not sum to 1")
            // softmax over the chosen logits alone
            let top = expected.map { row[$0] }, m = top.max()!
            let softmax = top.map { exp($0 - m) / top.reduce(0) { $0 + exp($1 - m) } }
            #expect(maxRelativeError(gates, softmax) < 1e-6, "token \(t): gates \(gates) vs softmax over top-k logits \(softmax)")
            let probabilities = Array(router.probabilities[(t * E)..<((t + 1) * E)]).doubles
            #expect(abs(probabilities.reduce(0, +) - 1) < 1e-6)
        }
    }

    /// Gate = the identity on the first E coordinates, so token t's logits are its first E inputs.
    static func identityRouted(_ spec: MoESpec, dModel: Int) -> MoEHarness {
        let h = MoEHarness(spec, dModel: dModel)
        let E = spec.experts
        h.set("block_sparse_moe.gate.weight", (0..<(E * dModel)).map { $0 % dModel == $0 / dModel ? 1 : 0 })
        return h
    }

    /// Tokens cycle through the experts with the same logit pattern (first choice t mod E, second
    /// (t+1) mod E), so every expert gets 1/E of the pairs and a mean probability of exactly 1/E.
    @Test(arguments: [1, 2])
    func theBalanceLossIsOneTimesItsCoefficientAtPerfectBalance(topK: Int) {
        let (E, d, rows) = (4, 6, 16)
        let spec = MoESpec(experts: E, topK: topK, expertHidden: 3, auxLossCoefficient: 0.25, zLossCoefficient: 0)
        let h = Self.identityRouted(spec, dModel: d)
        var x = [Float](repeating: 0, count: rows * d)
        for t in 0..<rows { x[t * d + t % E] = 3; x[t * d + (t + 1) % E] = 1.5 }
        let result = h.forward(x, rows: rows)
        #expect(result.summary.load.allSatisfy { abs($0 - 0.25) < 1e-12 }, "load \(result.summary.load)")
        #expect(abs(result.summary.balance - 1) < 1e-6, "balance \(result.summary.balance)")
        #expect(abs(result.aux - 0.25) < 1e-6, "moe_aux \(result.aux), want 1 × 0.25")
    }

    @Test func theBalanceLossIsExpertsTimesItsCoefficientWhenTop1CollapsesOnOneExpert() {
        let (E, d, rows) = (4, 6, 10)
        let spec = MoESpec(experts: E, topK: 1, expertHidden: 3, auxLossCoefficient: 0.1, zLossCoefficient: 0)
        let h = Self.identityRouted(spec, dModel: d)
        var x = Fixtures.randoms(rows * d, seed: 3, scale: 0.1)
        for t in 0..<rows { x[t * d] = 40 }   // expert 0 takes everything, with probability ≈ 1 − 3e−17
        let result = h.forward(x, rows: rows)
        #expect(result.summary.load == [1, 0, 0, 0])
        #expect(abs(result.aux - Double(E) * 0.1) < 1e-6, "moe_aux \(result.aux), want \(E) × 0.1")
    }

    @Test func theZLossOfAllZeroLogitsIsLnESquared() {
        let (E, d, rows) = (8, 4, 5)
        let spec = MoESpec(experts: E, topK: 2, expertHidden: 3, auxLossCoefficient: 0, zLossCoefficient: 0.5)
        let h = MoEHarness(spec, dModel: d)
        h.set("block_sparse_moe.gate.weight", [Float](repeating: 0, count: E * d))
        let result = h.forward(Fixtures.randoms(rows * d, seed: 2), rows: rows)
        let expected = log(Double(E)) * log(Double(E))
        #expect(abs(result.summary.zLoss - expected) < 1e-6, "z-loss \(result.summary.zLoss), want (ln \(E))² = \(expected)")
        #expect(abs(result.z - 0.5 * expected) < 1e-6)
    }

    /// With dOut = 0 only the auxiliary losses reach the gradient: the router's weight and the
    /// input get ∂(aux · balance + z · zLoss)/∂· (gradientScale 1/N), matching central differences
    /// of the Float64 reference; the experts get nothing.
    @Test(arguments: [1, 2])
    func auxiliaryLossGradientsMatchFiniteDifferences(topK: Int) {
        let (E, d, rows) = (5, 6, 14)
        let spec = MoESpec(experts: E, topK: topK, expertHidden: 4, auxLossCoefficient: 0.7, zLossCoefficient: 0.3)
        let h = MoEHarness(spec, dModel: d, seed: 11)
        let x = Fixtures.randoms(rows * d, seed: 12)
        h.forward(x, rows: rows)
        let dx = h.backward([Float](repeating: 0, count: rows * d), gradientScale: 1 / Float(rows))
        var weights = h.weights()
        let reference = h.reference
        func objective(_ input: [Double], _ w: [String: [Double]]) -> Double {
            let r = reference.forward(input, rows: rows) { w[$0]! }
            return spec.auxLossCoefficient * r.balance + spec.zLossCoefficient * r.zLoss
        }
        let gateName = "block_sparse_moe.gate.weight"
        let numericGate = GradientCheck.numeric(at: weights[gateName]!, h: 1e-6) { weights[gateName] = $0; return objective(x.doubles, weights) }
        weights = h.weights()
        let numericX = GradientCheck.numeric(at: x.doubles, h: 1e-6) { objective($0, weights) }
        let analyticGate = Array(h.parameters.gradients.buffer[h.parameters.entry(gateName).range])
        #expect(GradientCheck.relativeError(analyticGate, numericGate) < 1e-4, "router gradient \(analyticGate) vs \(numericGate)")
        #expect(GradientCheck.relativeError(dx, numericX) < 1e-4, "input gradient \(dx) vs \(numericX)")
        #expect(numericGate.map(abs).max()! > 1e-3, "the auxiliary losses barely move the router: the check cannot see it")
        for e in h.parameters.entries where e.name != gateName {
            #expect(h.parameters.gradients.buffer[e.range].allSatisfy { $0 == 0 }, "\(e.name) got a gradient from the auxiliary losses")
        }
    }
}
