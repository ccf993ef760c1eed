import Foundation
import Kernels
import Testing
@testable import Models
import TensorCore
import _TestSupport

/// The capacity limit: its size, which pairs it admits, and its two extremes.
@Suite struct MoECapacityTests {
    @Test func capacityIsTheCeilingOfKTimesTokensTimesTheFactorOverExperts() {
        #expect(MoESpec(experts: 4, topK: 2, expertHidden: 1, capacityFactor: 1.25).capacity(tokens: 10) == 7)   // ⌈6.25⌉
        #expect(MoESpec(experts: 4, topK: 1, expertHidden: 1, capacityFactor: 1).capacity(tokens: 8) == 2)
        #expect(MoESpec(experts: 3, topK: 2, expertHidden: 1, capacityFactor: 0.5).capacity(tokens: 7) == 3)    // ⌈2.33⌉
        #expect(MoESpec(experts: 8, topK: 2, expertHidden: 1, capacityFactor: 0).capacity(tokens: 100) == 0)
        #expect(MoESpec(experts: 8, topK: 2, expertHidden: 1).capacity(tokens: 100) == nil)
    }

    /// Two experts routed by the first two inputs (gate = identity there).
    static func harness(_ factor: Double?, topK: Int = 2, experts: Int = 2, dModel: Int = 4) -> MoEHarness {
        let spec = MoESpec(experts: experts, topK: topK, expertHidden: 3, capacityFactor: factor, auxLossCoefficient: 0.01, zLossCoefficient: 0.001)
        let h = MoEHarness(spec, dModel: dModel, seed: 21)
        h.set("block_sparse_moe.gate.weight", (0..<(experts * dModel)).map { $0 % dModel == $0 / dModel ? 1 : 0 })
        return h
    }

    /// Expert e's output for one row, gate excluded (Float64 reference of the same weights).
    static func expert(_ h: MoEHarness, _ e: Int, _ row: [Float]) -> [Double] {
        let w = h.weights(), d = h.dModel, f = h.spec.expertHidden, p = "block_sparse_moe.experts.\(e)."
        let g = Reference.linear(row.doubles, w[p + "w1.weight"]!, rows: 1, inFeatures: d, outFeatures: f)
        let u = Reference.linear(row.doubles, w[p + "w3.weight"]!, rows: 1, inFeatures: d, outFeatures: f)
        return Reference.linear(Reference.swiglu(gate: g, up: u), w[p + "w2.weight"]!, rows: 1, inFeatures: f, outFeatures: d)
    }

    static func row(_ values: [Float], _ t: Int, _ d: Int) -> [Float] { Array(values[(t * d)..<((t + 1) * d)]) }

    /// Capacity ⌈2·2·0.5/2⌉ = 1. Token 0 prefers expert 1 then 0; token 1 prefers 0 then 1.
    /// Position order alone would give expert 0 to token 0's second choice; first choices come
    /// first, so expert 0 takes token 1's first choice and token 0's second choice is dropped.
    @Test func everyFirstChoiceIsAdmittedBeforeAnySecondChoice() {
        let h = Self.harness(0.5)
        let x: [Float] = [0.2, 1.0, 0.3, -0.4,
                          1.0, 0.1, -0.2, 0.5]
        let result = h.forward(x, rows: 2)
        let gates = h.layerGates()
        let out0 = Self.expert(h, 1, Self.row(x, 0, 4)).map { $0 * gates[0] }            // first choice only
        let out1 = Self.expert(h, 0, Self.row(x, 1, 4)).map { $0 * gates[2] }            // first choice only
        #expect(maxRelativeError(Self.row(result.out, 0, 4), out0) < 1e-6, "token 0 should get its first choice (expert 1) alone")
        #expect(maxRelativeError(Self.row(result.out, 1, 4), out1) < 1e-6, "token 1 should get its first choice (expert 0) alone")
        #expect(result.summary.droppedFraction == 0.5)
    }

    /// Golden routing of 4 tokens, top-2 of 2 experts, factor 0.5: capacity 2. First choices:
    /// expert 0 gets tokens 0, 1, 2 (keeps 0, 1), expert 1 gets token 3. Second choices: expert 1
    /// gets tokens 0, 1, 2 (keeps 0), expert 0 gets token 3 (full: dropped). 4 of 8 pairs dropped;
    /// token 2 keeps nothing, so the layer adds exactly zero to it.
    @Test func goldenAdmissionOfFourTokens() {
        let h = Self.harness(0.5)
        let x: [Float] = [1.0, 0.2, 0.3, -0.4,
                          0.9, -0.1, 0.2, 0.5,
                          1.2, 0.4, -0.3, 0.1,
                          0.1, 0.8, 0.6, -0.2]
        let result = h.forward(x, rows: 4)
        let g = h.layerGates(), d = 4
        let expected: [[Double]] = [
            zip(Self.expert(h, 0, Self.row(x, 0, d)), Self.expert(h, 1, Self.row(x, 0, d))).map { g[0] * $0 + g[1] * $1 },
            Self.expert(h, 0, Self.row(x, 1, d)).map { g[2] * $0 },
            [0, 0, 0, 0],
            Self.expert(h, 1, Self.row(x, 3, d)).map { g[6] * $0 },
        ]
        for t in 0..<4 {
            #expect(maxRelativeError(Self.row(result.out, t, d), expected[t]) < 1e-6, "token \(t): \(Self.row(result.out, t, d)) vs \(expected[t])")
        }
        #expect(Self.row(result.out, 2, d) == [0, 0, 0, 0])
        #expect(result.summary.droppedFraction == 0.5)
        #expect(result.summary.load == [0.5, 0.5])
        let reference = h.reference.forward(x.doubles, rows: 4) { h.weights()[$0]! }
        #expect(reference.dropped == 4)
        #expect(maxRelativeError(result.out, reference.out) < 1e-6)
    }

    @Test(arguments: [1, 2])
    func aHugeCapacityFactorEqualsTheDroplessLayer(topK: Int) {
        let (rows, d) = (24, 6)
        let x = Fixtures.randoms(rows * d, seed: 4), dOut = Fixtures.randoms(rows * d, seed: 5)
        var runs: [(out: [Float], dx: [Float], gradients: [Float], aux: Double)] = []
        for factor in [nil, 1000.0] {
            let h = MoEHarness(MoESpec(experts: 4, topK: topK, expertHidden: 5, capacityFactor: factor), dModel: d, seed: 8)
            let result = h.forward(x, rows: rows)
            #expect(result.summary.droppedFraction == 0)
            let dx = h.backward(dOut, gradientScale: 0.5)
            runs.append((result.out, dx, h.parameters.gradients.array, result.aux))
        }
        #expect(runs[0].out == runs[1].out)
        #expect(runs[0].dx == runs[1].dx)
        #expect(runs[0].gradients == runs[1].gradients)
        #expect(runs[0].aux == runs[1].aux)
        #expect(runs[0].out.contains { $0 != 0 })
    }

    /// Capacity zero drops every pair: the layer adds nothing (the block's residual carries
    /// every token), the experts get no gradient, and only the auxiliary losses reach the router.
    @Test func capacityZeroLeavesTheResidualAlone() {
        let (rows, d) = (10, 4)
        let h = MoEHarness(MoESpec(experts: 4, topK: 2, expertHidden: 3, capacityFactor: 0, auxLossCoefficient: 0.1, zLossCoefficient: 0.1),
                           dModel: d, seed: 3)
        let result = h.forward(Fixtures.randoms(rows * d, seed: 6), rows: rows)
        #expect(result.out.allSatisfy { $0 == 0 })
        #expect(result.summary.droppedFraction == 1)
        _ = h.backward(Fixtures.randoms(rows * d, seed: 7), gradientScale: 1)
        for e in h.parameters.entries {
            let moved = h.parameters.gradients.buffer[e.range].contains { $0 != 0 }
            #expect(moved == (e.name == "block_sparse_moe.gate.weight"), "\(e.name): gradient \(moved ? "moved" : "stayed zero")")
        }
    }
}

extension MoEHarness {
    /// The renormalised gates of the last forward pass (tokens × k), as Float64.
    func layerGates() -> [Double] { layer.routerGates.doubles }
}
