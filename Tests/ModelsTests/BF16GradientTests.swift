import Testing
import Kernels
import Models
import TensorCore
import _TestSupport

/// Whole-model gradients with the linear layers' products in bf16 (`TransformerLM.precision`)
/// against the same model in Float32.
///
/// Bound: bf16 rounds every product input to 8 significant bits (relative error ≤ 2⁻⁹ each),
/// so the loss must agree to 1% and every parameter tensor's gradient to 5% in norm
/// (‖g_bf16 − g_fp32‖ ≤ 0.05 ‖g_fp32‖; measured about 0.3–1.5% here).
@Suite struct BF16GradientTests {
    static func config(moe: Bool) -> ModelConfig {
        var config = ModelConfig(vocabSize: 37, dModel: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 48, ropeTheta: 100,
                                 normEps: 1e-5, tieEmbeddings: false, maxSequenceLength: 16)
        if moe {
            config.blocks[1].channelMixer = .moe(MoESpec(experts: 4, topK: 2, expertHidden: 24, auxLossCoefficient: 0.01, zLossCoefficient: 0.001))
        }
        return config
    }

    static func lossAndGradients(moe: Bool, precision: ComputePrecision, threads: Int = 1) throws -> (loss: Double, model: TransformerLM) {
        let model = try TransformerLM(config: config(moe: moe), seed: 3)
        model.precision = precision
        model.threads = KernelThreads(threads)
        let data = TransformerLMTests.batch(seed: 8, batch: 2, length: 12, vocab: 37)
        let loss = try model.lossAndGradients(tokens: data.tokens, targets: data.targets, batch: 2, length: 12, gradientScale: 1)
        return (loss, model)
    }

    @Test(arguments: [false, true])
    func bf16GradientsMatchFloat32WithinTheBound(moe: Bool) throws {
        let fp32 = try Self.lossAndGradients(moe: moe, precision: .fp32)
        let bf16 = try Self.lossAndGradients(moe: moe, precision: .bf16)
        #expect(abs(bf16.loss - fp32.loss) <= 0.01 * abs(fp32.loss), "loss \(bf16.loss) vs \(fp32.loss)")
        var largest = 0.0
        for entry in fp32.model.parameters.entries {
            let g32 = fp32.model.parameters.gradient(entry.name), g16 = bf16.model.parameters.gradient(entry.name)
            var difference = 0.0, norm = 0.0
            for i in 0..<entry.count {
                difference += Double(g16[i] - g32[i]) * Double(g16[i] - g32[i])
                norm += Double(g32[i]) * Double(g32[i])
            }
            let relative = (difference / max(norm, 1e-30)).squareRoot()
            largest = max(largest, relative)
            #expect(relative <= 0.05, "\(entry.name): gradient differs by \(relative) of its norm")
        }
        #expect(largest > 1e-4, "bf16 products should change the gradients measurably (largest relative difference \(largest))")
    }

    /// bf16 passes give the same bits for any thread count (the products' k order is fixed).
    @Test func bf16GradientsAreTheSameBitsForAnyThreadCount() throws {
        let one = try Self.lossAndGradients(moe: true, precision: .bf16, threads: 1)
        let three = try Self.lossAndGradients(moe: true, precision: .bf16, threads: 3)
        #expect(one.loss == three.loss)
        let count = one.model.parameters.count
        #expect((0..<count).allSatisfy { one.model.parameters.gradients.pointer[$0] == three.model.parameters.gradients.pointer[$0] })
    }
}
