import Testing
import Kernels
import Models
import TensorCore
import _TestSupport

/// `blockForward`/`blockBackward` (one block on a given residual input) and the pass with a
/// caller-supplied logits loss, as distillation uses them.
@Suite struct BlockEntryPointTests {
    static let (B, T, d) = (2, 6, 16)

    static func hybrid() throws -> TransformerLM {
        try Mamba2MixerTests.model([Mamba2MixerTests.mamba, Mamba2MixerTests.attention], seed: 4)
    }

    @Test func eachBlockAloneGivesWhatTheFullPassGives() throws {
        let model = try Self.hybrid()
        let tokens = (0..<(Self.B * Self.T)).map { Int32($0 * 5 % 13) }
        var inputs: [Int: [Float]] = [:], outputs: [Int: [Float]] = [:]
        model.capture = { layer, point, values, _ in
            if point == .blockInput { inputs[layer] = Array(values) }
            if point == .blockOutput { outputs[layer] = Array(values) }
        }
        _ = try model.logits(tokens: tokens, batch: Self.B, length: Self.T)
        model.capture = nil
        for layer in 0..<2 {
            let alone = try model.blockForward(layer: layer, input: inputs[layer]!, batch: Self.B, length: Self.T)
            #expect(alone.map(\.bitPattern) == outputs[layer]!.map(\.bitPattern), "layer \(layer)")
        }
    }

    /// ∂(Σ out·w)/∂input and ∂/∂(mixer out_proj) from `blockBackward` against central
    /// differences along random directions (Float32 model: ε = 1e-3, 1 % bound).
    @Test(arguments: [0, 1])
    func blockBackwardMatchesFiniteDifferences(layer: Int) throws {
        let model = try Self.hybrid()
        let n = Self.B * Self.T * Self.d
        let input = Fixtures.randoms(n, seed: 1), probe = Fixtures.randoms(n, seed: 2), direction = Fixtures.randoms(n, seed: 3)
        func objective(_ x: [Float]) throws -> Double {
            GradientCheck.dot(try model.blockForward(layer: layer, input: x, batch: Self.B, length: Self.T).doubles, probe.doubles)
        }
        model.parameters.zeroGradients()
        _ = try model.blockForward(layer: layer, input: input, batch: Self.B, length: Self.T)
        let dInput = try model.blockBackward(layer: layer, outputGradient: probe)
        let epsilon: Float = 1e-3
        let analytic = zip(dInput, direction).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        let numeric = try (objective(zip(input, direction).map { $0 + epsilon * $1 }) - objective(zip(input, direction).map { $0 - epsilon * $1 }))
            / (2 * Double(epsilon))
        #expect(abs(analytic - numeric) <= 1e-2 * abs(numeric), "layer \(layer) input: \(analytic) vs \(numeric)")
        let name = layer == 0 ? "model.layers.0.mixer.out_proj.weight" : "model.layers.1.self_attn.o_proj.weight"
        let p = model.parameters, count = p.entry(name).count
        let gradient = Array(UnsafeBufferPointer(start: p.gradient(name), count: count))
        let w = Fixtures.randoms(count, seed: 4), saved = Array(UnsafeBufferPointer(start: p.value(name), count: count))
        func shifted(_ sign: Float) throws -> Double {
            for i in 0..<count { p.value(name)[i] = saved[i] + sign * epsilon * w[i] }
            return try objective(input)
        }
        let numericW = try (shifted(1) - shifted(-1)) / (2 * Double(epsilon))
        let analyticW = zip(gradient, w).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        #expect(abs(analyticW - numericW) <= 1e-2 * abs(numericW) && abs(numericW) > 1e-3, "\(name): \(analyticW) vs \(numericW)")
    }

    @Test func aCallerSuppliedCrossEntropyGivesTheBuiltInGradients() throws {
        let (a, b) = (try Self.hybrid(), try Self.hybrid())
        let tokens = (0..<(Self.B * Self.T)).map { Int32($0 * 7 % 13) }, targets = tokens.map { ($0 + 1) % 13 }
        a.parameters.zeroGradients(); b.parameters.zeroGradients()
        let builtIn = try a.lossAndGradients(tokens: tokens, targets: targets, batch: Self.B, length: Self.T, gradientScale: 0.5)
        let supplied = try b.lossAndGradients(tokens: tokens, batch: Self.B, length: Self.T) { logits in
            targets.withUnsafeBufferPointer {
                SoftmaxCrossEntropy.forwardBackward(logits: logits, targets: $0.baseAddress!, rows: Self.B * Self.T, vocab: 13,
                                                    dLogits: logits, gradientScale: 0.5, threads: .single)
            }
        }
        #expect(builtIn == supplied)
        #expect(a.parameters.gradients.array.map(\.bitPattern) == b.parameters.gradients.array.map(\.bitPattern))
    }
}
