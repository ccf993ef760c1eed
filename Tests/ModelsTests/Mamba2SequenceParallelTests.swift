import Foundation
import Testing
@testable import Models
import Collectives
import Kernels
import TensorCore
import _TestSupport

/// The Mamba-2 mixer with the sequence sharded over 2, 3 and 4 sequence ranks (zigzag
/// positions; each rank runs its own pieces, passing the convolution's halo and the scan state,
/// `SequencePieces`) against one rank: forward, ∂L/∂x and every parameter gradient, and the
/// sharded backward against central differences of the Float64 reference.
@Suite struct Mamba2SequenceParallelTests {
    /// Length 24 splits into 2·P pieces for P = 2, 3, 4 (6, 4 and 3 tokens); chunk 3 of the
    /// scan, convolution width 4. Length 16 on 4 ranks: pieces of 2, so a halo spans two pieces.
    static let (B, T, d) = (2, 24, Mamba2MixerTests.dModel)

    /// The mixer's output and ∂L/∂x (whole sequences, (B·T, d)) for L = Σ probe ⊙ out, and the
    /// parameter gradients summed over the ranks (in rank order).
    struct Pass { var out: [Float], dx: [Float], gradients: [Float] }

    /// `x`'s rows at `positions` of each sequence.
    static func rows(_ x: [Float], at positions: [Int], length T: Int = T) -> [Float] {
        var out: [Float] = []
        for b in 0..<B {
            for position in positions {
                let row = (b * T + position) * d
                out += x[row..<(row + d)]
            }
        }
        return out
    }

    static func run(ranks: Int, x: [Float], probe: [Float], seed: UInt64 = 3, length T: Int = T) throws -> Pass {
        let results = InProcessCommunicator.run(size: ranks) { comm -> Pass in
            let grid = ranks > 1 ? try ProcessGrid(world: comm, layout: GridLayout(data: 1, sequence: ranks)) : nil
            let positions = SequenceSharding.positions(length: T, ranks: ranks, rank: comm.rank)
            let (mixer, p) = Mamba2MixerTests.mixer(seed: seed)
            let context = PassContext(batch: B, length: positions.count, positions: positions, grid: grid)
            let mine = rows(x, at: positions, length: T), dOut = rows(probe, at: positions, length: T)
            var out = [Float](repeating: 0, count: mine.count), dx = [Float](repeating: .nan, count: mine.count)
            try mine.withUnsafeBufferPointer { xp in
                try mixer.forward(xp.baseAddress!, addingTo: &out, layer: 0, context: context)
                p.zeroGradients()
                try mixer.backward(dOut, dx: &dx, layer: 0, context: context)
            }
            return Pass(out: out, dx: dx, gradients: p.gradients.array)
        }
        let passes = try results.map { try $0.get() }
        var whole = Pass(out: [Float](repeating: .nan, count: B * T * d), dx: [Float](repeating: .nan, count: B * T * d),
                         gradients: passes[0].gradients.map { _ in 0 })
        for (rank, pass) in passes.enumerated() {
            let positions = SequenceSharding.positions(length: T, ranks: ranks, rank: rank)
            for b in 0..<B {
                for (t, position) in positions.enumerated() {
                    let from = (b * positions.count + t) * d, to = (b * T + position) * d
                    whole.out.replaceSubrange(to..<(to + d), with: pass.out[from..<(from + d)])
                    whole.dx.replaceSubrange(to..<(to + d), with: pass.dx[from..<(from + d)])
                }
            }
            for i in whole.gradients.indices { whole.gradients[i] += pass.gradients[i] }
        }
        return whole
    }

    @Test(arguments: [(2, 24), (3, 24), (4, 24), (4, 16)])
    func shardedForwardAndBackwardEqualOneRank(ranks: Int, length T: Int) throws {
        let (B, d) = (Self.B, Self.d)
        let x = Fixtures.randoms(B * T * d, seed: 21), probe = Fixtures.randoms(B * T * d, seed: 22)
        let one = try Self.run(ranks: 1, x: x, probe: probe, length: T)
        let sharded = try Self.run(ranks: ranks, x: x, probe: probe, length: T)
        // The same values as one rank up to the order of Float32 sums (states combined across pieces).
        let outError = GradientCheck.relativeError(sharded.out, one.out.doubles)
        #expect(outError < 1e-5, "\(ranks) ranks: forward relative error \(outError)")
        let dxError = GradientCheck.relativeError(sharded.dx, one.dx.doubles)
        let gradientError = GradientCheck.relativeError(sharded.gradients, one.gradients.doubles)
        #expect(dxError < 1e-5, "\(ranks) ranks: dx relative error \(dxError)")
        #expect(gradientError < 1e-5, "\(ranks) ranks: parameter gradients relative error \(gradientError)")
        #expect(one.gradients.contains { $0 != 0 } && one.dx.allSatisfy(\.isFinite))
    }

    /// The sharded backward (each rank's pieces, the entering states' and the halo's gradients
    /// passed back) against central differences of the Float64 reference mixer.
    @Test func shardedGradientsMatchCentralDifferences() throws {
        let (B, T, d) = (Self.B, Self.T, Self.d)
        let x = Fixtures.randoms(B * T * d, seed: 23), probe = Fixtures.randoms(B * T * d, seed: 24)
        let sharded = try Self.run(ranks: 3, x: x, probe: probe, seed: 5)
        let (_, p) = Mamba2MixerTests.mixer(seed: 5)
        let spec = Mamba2MixerTests.spec
        let shape = Reference.SSDShape(batch: B, length: T, heads: spec.heads, headDim: spec.headDim, stateSize: spec.stateSize)
        let values = p.values.array.doubles
        func loss(_ input: [Double], _ v: [Double]) -> Double {
            GradientCheck.dot(Reference.mamba2Mixer(shape, dModel: d, convWidth: 4, input: input, weights: Mamba2MixerTests.weights(v, p)),
                              probe.doubles)
        }
        let reference = Reference.mamba2Mixer(shape, dModel: d, convWidth: 4, input: x.doubles, weights: Mamba2MixerTests.weights(values, p))
        #expect(GradientCheck.relativeError(sharded.out, reference) < 1e-5)
        let numericX = GradientCheck.numeric(at: x.doubles) { loss($0, values) }
        #expect(GradientCheck.relativeError(sharded.dx, numericX) < 1e-3, "dx")
        let numeric = GradientCheck.numeric(at: values) { loss(x.doubles, $0) }
        for entry in p.entries {
            let error = GradientCheck.relativeError(Array(sharded.gradients[entry.range]), Array(numeric[entry.range]))
            #expect(error < 1e-3, "\(entry.name): relative error \(error)")
        }
    }
}
