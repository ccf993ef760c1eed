import Testing
import Models
import TensorCore
import _TestSupport

/// What a pass carries besides tokens: explicit positions and the capture hook.
@Suite struct PassHooksTests {
    static let config = ModelConfig(vocabSize: 11, dModel: 8, layers: 2, heads: 2, kvHeads: 1, ffnHidden: 12, ropeTheta: 100)
    static let (B, T) = (2, 6)
    static var data: (tokens: [Int32], targets: [Int32]) { TransformerLMTests.batch(seed: 3, batch: B, length: T, vocab: 11) }

    static func model(_ kernel: AttentionKernel = .flash) throws -> TransformerLM {
        var config = config
        if kernel != .flash {
            config = ModelConfig(vocabSize: 11, dModel: 8, layers: 2, heads: 2, kvHeads: 1, ffnHidden: 12, ropeTheta: 100, attentionKernel: kernel)
        }
        let model = try TransformerLM(config: config, seed: 4)
        for i in 0..<model.parameters.count where model.parameters.values[i] != 1 { model.parameters.values[i] *= 20 }
        return model
    }

    /// RoPE scores depend on relative positions only: shifting every position by the same amount
    /// leaves the logits unchanged (to rounding), while other positions change them.
    @Test(arguments: AttentionKernel.allCases)
    func positionsReachTheRotaryEmbedding(kernel: AttentionKernel) throws {
        let model = try Self.model(kernel)
        let (B, T) = (Self.B, Self.T)
        let plain = try model.logits(tokens: Self.data.tokens, batch: B, length: T)
        let shifted = try model.logits(tokens: Self.data.tokens, batch: B, length: T, positions: (0..<T).map { $0 + 37 })
        let spread = try model.logits(tokens: Self.data.tokens, batch: B, length: T, positions: (0..<T).map { $0 * 3 })
        #expect(maxRelativeError(shifted, plain) < 1e-4)
        #expect(maxRelativeError(spread, plain) > 1e-2, "positions 0, 3, 6, ... are not positions 0, 1, 2, ...")
        #expect(try model.logits(tokens: Self.data.tokens, batch: B, length: T, positions: Array(0..<T)) == plain)
    }

    /// With the flash kernel the probabilities are computed for the hook alone.
    @Test(arguments: AttentionKernel.allCases)
    func theCaptureHookSeesEachLayersInputsOutputsAndAttention(kernel: AttentionKernel) throws {
        let model = try Self.model(kernel)
        let (B, T, d) = (Self.B, Self.T, Self.config.dModel)
        let plain = try model.logits(tokens: Self.data.tokens, batch: B, length: T)
        var seen: [String: (values: [Float], shape: [Int])] = [:]
        var calls = 0
        model.capture = { layer, point, values, shape in
            seen["\(layer).\(point.rawValue)"] = (Array(values), shape)
            calls += 1
        }
        let captured = try model.logits(tokens: Self.data.tokens, batch: B, length: T)
        #expect(captured == plain, "capturing does not change the numbers")
        for layer in 0..<2 {
            for point in ["blockInput", "sequenceMixerInput", "sequenceMixerOutput", "blockOutput"] {
                #expect(seen["\(layer).\(point)"]?.shape == [B * T, d], "layer \(layer) \(point)")
            }
            let (p, shape) = seen["\(layer).attentionProbabilities"]!
            #expect(shape == [B, 2, T, T])
            for row in 0..<(B * 2 * T) {
                let i = row % T
                let sum = (0...i).reduce(Float(0)) { $0 + p[row * T + $1] }
                #expect(abs(sum - 1) < 1e-5, "row \(row) sums to \(sum)")
                #expect(((i + 1)..<T).allSatisfy { p[row * T + $0] == 0 }, "row \(row) sees the future")
            }
        }
        #expect(seen["1.blockInput"]!.values == seen["0.blockOutput"]!.values)
        // The residual stream: block input + what the mixers add.
        let input = seen["0.blockInput"]!.values, mixed = seen["0.sequenceMixerOutput"]!.values
        #expect(input.count == mixed.count && zip(input, mixed).contains { $1 != 0 })
        #expect(calls == 10, "5 points × 2 layers per pass")
        model.capture = nil
        _ = try model.logits(tokens: Self.data.tokens, batch: B, length: T)
        #expect(calls == 10, "nothing is captured once the hook is removed")
    }

    /// Both kernels hand the hook the same probabilities, 0 above the diagonal, also for a
    /// length past the materialised kernel's 64-row blocks (it writes a block's rows only up to
    /// the block's last column): the same bits in the first layer, whose inputs are the same,
    /// and to rounding in the second.
    @Test func bothKernelsCaptureTheSameProbabilities() throws {
        let (B, T) = (1, 70)
        let tokens = TransformerLMTests.batch(seed: 5, batch: B, length: T, vocab: 11).tokens
        func capture(_ kernel: AttentionKernel) throws -> [Int: [Float]] {
            let model = try Self.model(kernel)
            var seen: [Int: [Float]] = [:]
            model.capture = { layer, point, values, shape in
                if point == .attentionProbabilities { seen[layer] = Array(values); #expect(shape == [B, 2, T, T]) }
            }
            _ = try model.logits(tokens: tokens, batch: B, length: T)
            _ = try model.logits(tokens: tokens, batch: B, length: T)   // reused scratch
            return seen
        }
        let flash = try capture(.flash), naive = try capture(.naive)
        #expect(flash[0]! == naive[0]!)
        #expect(maxRelativeError(flash[1]!, naive[1]!) < 1e-5)
        for p in [flash[0]!, flash[1]!] {
            for row in 0..<(2 * T) { #expect(((row % T + 1)..<T).allSatisfy { p[row * T + $0] == 0 }, "row \(row) sees the future") }
        }
    }
}
