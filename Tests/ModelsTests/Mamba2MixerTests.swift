import Foundation
import Testing
@testable import Models
import Collectives
import Kernels
import TensorCore
import _TestSupport

/// The discrete Mamba-2 mixer as a component: Phi-Mamba's names and initialisation, forward and
/// every gradient against a Float64 reference, its mixing matrix, generation through the
/// recurrent state, and models built from it training.
@Suite struct Mamba2MixerTests {
    static let spec = Mamba2Spec(heads: 2, headDim: 3, stateSize: 2, convWidth: 4, chunkSize: 3)
    static let dModel = 5
    static let (B, T) = (2, 7)

    /// A mixer bound to its own parameter set, every parameter random (so the identity
    /// convolution and the constant z_bias do not hide a path).
    static func mixer(seed: UInt64) -> (Mamba2Mixer, ParameterSet) {
        let mixer = Mamba2Mixer(spec: spec, dModel: dModel, residualStd: 0.1)
        let parameters = ParameterSet(mixer.declarations)
        let random = Fixtures.randoms(parameters.count, seed: seed, scale: 0.5)
        for i in 0..<parameters.count { parameters.values[i] = random[i] }
        mixer.bind(to: parameters, prefix: "")
        return (mixer, parameters)
    }

    static var shape: Reference.SSDShape {
        .init(batch: B, length: T, heads: spec.heads, headDim: spec.headDim, stateSize: spec.stateSize)
    }

    /// The reference's weights, from a flat vector laid out as the parameter set.
    static func weights(_ v: [Double], _ p: ParameterSet) -> Reference.Mamba2Weights<Double> {
        func slice(_ name: String) -> [Double] { Array(v[p.entry("mixer." + name).range]) }
        return .init(inProj: slice("in_proj.weight"), zBias: slice("z_bias"), convWeight: slice("conv1d.weight"),
                     convBias: slice("conv1d.bias"), d: slice("D"), outProj: slice("out_proj.weight"))
    }

    @Test func parameterNamesShapesAndInitialisationFollowPhiMamba() throws {
        let config = ModelConfig(vocabSize: 11, dModel: 12, blocks: [BlockSpec(sequenceMixer: .mamba2(Mamba2Spec(heads: 3, headDim: 4)),
                                                                               channelMixer: .swiGLU(hidden: 8))])
        let model = try TransformerLM(config: config, seed: 1)
        let p = model.parameters
        let (H, P, N) = (3, 4, 4)
        let expected: [(String, [Int])] = [("in_proj.weight", [2 * H * P + 2 * H * N + H, 12]), ("z_bias", [H * P]),
                                           ("conv1d.weight", [H * P + 2 * H * N, 1, 4]), ("conv1d.bias", [H * P + 2 * H * N]),
                                           ("D", [H]), ("out_proj.weight", [12, H * P])]
        let names = p.entries.map(\.name).filter { $0.contains(".mixer.") }
        #expect(names == expected.map { "model.layers.0.mixer." + $0.0 })
        for (name, shape) in expected { #expect(p.entry("model.layers.0.mixer." + name).shape == shape) }
        let conv = Array(p.values.buffer[p.entry("model.layers.0.mixer.conv1d.weight").range])
        #expect(conv == Array((0..<(H * P + 2 * H * N)).map { _ in [Float(0), 0, 0, 1] }.joined()), "identity taps")
        for b in p.values.buffer[p.entry("model.layers.0.mixer.z_bias").range] { #expect(abs(b / (1 + exp(-b)) - 1) < 1e-6, "silu(z_bias) = 1") }
        #expect(p.values.buffer[p.entry("model.layers.0.mixer.D").range].allSatisfy { $0 == 1 })
        #expect(!p.entry("model.layers.0.mixer.D").decays && !p.entry("model.layers.0.mixer.z_bias").decays)
    }

    /// Forward against the Float64 reference; dx and every parameter gradient against central
    /// differences of it (chunk 3 over length 7: a ragged last chunk).
    @Test func forwardAndGradientsMatchTheFloat64Reference() {
        let (mixer, p) = Self.mixer(seed: 3)
        let (n, d) = (Self.B * Self.T, Self.dModel)
        let x = Fixtures.randoms(n * d, seed: 4)
        let probe = Fixtures.randoms(n * d, seed: 5)
        let context = PassContext(batch: Self.B, length: Self.T, threads: KernelThreads(2))
        var out = [Float](repeating: 0, count: n * d), dx = [Float](repeating: .nan, count: n * d)
        x.withUnsafeBufferPointer { xp in
            mixer.forward(xp.baseAddress!, addingTo: &out, layer: 0, context: context)
            p.zeroGradients()
            mixer.backward(probe, dx: &dx, layer: 0, context: context)
        }
        let values = p.values.array.doubles
        let reference = Reference.mamba2Mixer(Self.shape, dModel: d, convWidth: 4, input: x.doubles, weights: Self.weights(values, p))
        #expect(GradientCheck.relativeError(out, reference) < 1e-5)
        let numericX = GradientCheck.numeric(at: x.doubles) { v in
            GradientCheck.dot(Reference.mamba2Mixer(Self.shape, dModel: d, convWidth: 4, input: v, weights: Self.weights(values, p)), probe.doubles)
        }
        #expect(GradientCheck.relativeError(dx, numericX) < 1e-3, "dx")
        let numeric = GradientCheck.numeric(at: values) { v in
            GradientCheck.dot(Reference.mamba2Mixer(Self.shape, dModel: d, convWidth: 4, input: x.doubles, weights: Self.weights(v, p)), probe.doubles)
        }
        for entry in p.entries {
            let error = GradientCheck.relativeError(Array(p.gradients.buffer[entry.range]), Array(numeric[entry.range]))
            #expect(error < 1e-3, "\(entry.name): relative error \(error)")
        }
    }

    /// The materialised matrix of the mixer: its gradient reaches only the parameters that shape
    /// M (in_proj's B, C and A_log rows, the B and C channels of the convolution, D) and matches
    /// central differences of the reference matrix.
    @Test func mixingMatrixGradientsReachOnlyWhatShapesIt() {
        let (mixer, p) = Self.mixer(seed: 7)
        let (n, d, H, T) = (Self.B * Self.T, Self.dModel, Self.spec.heads, Self.T)
        let x = Fixtures.randoms(n * d, seed: 8)
        let probe = Fixtures.randoms(Self.B * H * T * T, seed: 9)
        let context = PassContext(batch: Self.B, length: T)
        var m = [Float](repeating: .nan, count: probe.count), dx = [Float](repeating: .nan, count: n * d)
        x.withUnsafeBufferPointer { xp in
            mixer.mixingMatrix(xp.baseAddress!, matrix: &m, context: context)
            p.zeroGradients()
            mixer.mixingMatrixBackward(probe, dx: &dx, context: context)
        }
        let s = mixer.shape
        func referenceMatrix(_ v: [Double], _ input: [Double]) -> [Double] {
            let w = Self.weights(v, p)
            let projected = Reference.linear(input, w.inProj, rows: n, inFeatures: d, outFeatures: s.projectionWidth)
            var xBC: [Double] = [], aLog: [Double] = []
            for r in 0..<n {
                xBC += projected[(r * s.projectionWidth)..<(r * s.projectionWidth + s.convChannels)]
                aLog += projected[(r * s.projectionWidth + s.aLogOffset)..<((r + 1) * s.projectionWidth)]
            }
            let conv = Reference.causalConv(xBC, weight: w.convWeight, bias: w.convBias, batch: Self.B, length: T,
                                            channels: s.convChannels, width: 4)
            var b: [Double] = [], c: [Double] = []
            for r in 0..<n {
                b += conv[(r * s.convChannels + s.inner)..<(r * s.convChannels + s.inner + s.stateWidth)]
                c += conv[(r * s.convChannels + s.inner + s.stateWidth)..<((r + 1) * s.convChannels)]
            }
            return Reference.ssdMixingMatrix(Self.shape, b: b, c: c, aLog: aLog, d: w.d)
        }
        let values = p.values.array.doubles
        #expect(GradientCheck.relativeError(m, referenceMatrix(values, x.doubles)) < 1e-5)
        let numeric = GradientCheck.numeric(at: values) { GradientCheck.dot(referenceMatrix($0, x.doubles), probe.doubles) }
        for entry in p.entries {
            let error = GradientCheck.relativeError(Array(p.gradients.buffer[entry.range]), Array(numeric[entry.range]))
            #expect(error < 1e-3, "\(entry.name): relative error \(error)")
        }
        for name in ["mixer.z_bias", "mixer.out_proj.weight"] { #expect(p.gradients.buffer[p.entry(name).range].allSatisfy { $0 == 0 }, "\(name)") }
        let projection = Array(p.gradients.buffer[p.entry("mixer.in_proj.weight").range])
        for row in 0..<s.projectionWidth where row < s.inner || (row >= s.zOffset && row < s.aLogOffset) {
            #expect(projection[(row * d)..<((row + 1) * d)].allSatisfy { $0 == 0 }, "in_proj row \(row) (x or z) has no say in M")
        }
        let numericX = GradientCheck.numeric(at: x.doubles) { GradientCheck.dot(referenceMatrix(values, $0), probe.doubles) }
        #expect(GradientCheck.relativeError(dx, numericX) < 1e-3, "dx of M")
    }

    static func model(_ layers: [SequenceMixerSpec], seed: UInt64 = 2) throws -> TransformerLM {
        let config = ModelConfig(vocabSize: 13, dModel: 16, maxSequenceLength: 64,
                                 blocks: layers.map { BlockSpec(sequenceMixer: $0, channelMixer: .swiGLU(hidden: 24)) })
        return try TransformerLM(config: config, seed: seed)
    }

    static let mamba = SequenceMixerSpec.mamba2(Mamba2Spec(heads: 2, headDim: 8, stateSize: 8, chunkSize: 4))
    static let attention = SequenceMixerSpec.attention(AttentionSpec(heads: 2, kvHeads: 1, headDim: 8, ropeTheta: 100))

    /// Generation runs the prompt through the chunked scan and every later token through the
    /// recurrent step; each token's logits equal those of the full forward pass over the
    /// sequence so far, and an all-Mamba model's state does not grow.
    @Test(arguments: [false, true])
    func recurrentGenerationMatchesTheFullForwardPass(hybrid: Bool) throws {
        let model = try Self.model(hybrid ? [Self.mamba, Self.attention, Self.mamba] : [Self.mamba, Self.mamba])
        for i in 0..<model.parameters.count where model.parameters.values[i] != 1 && model.parameters.values[i] != 0 {
            model.parameters.values[i] *= 8   // away from the near-identity start, so the layers matter
        }
        let tokens: [Int32] = (0..<17).map { Int32(($0 * 7 + 3) % 13) }
        let prompt = 6
        let session = try InferenceSession(model: model)
        var logits = try session.prefill(tokens: Array(tokens[0..<prompt]))
        let bytes = session.cacheBytes
        for length in prompt...tokens.count {
            let full = model.logits(tokens: Array(tokens[0..<length]), batch: 1, length: length)
            let last = Array(full[((length - 1) * 13)...])
            #expect(GradientCheck.relativeError(logits, last.doubles) < 1e-4, "position \(length - 1)")
            if length < tokens.count { logits = try session.decode(token: tokens[length]) }
        }
        if !hybrid {
            #expect(session.cacheBytes == bytes, "a recurrent state does not grow with the context")
            #expect(session.cachedPositions == 0)
        } else {
            #expect(session.cachedPositions == tokens.count)
        }
    }

    /// A model of Mamba-2 layers (and a hybrid keeping attention in its middle layer) learns a
    /// fixed batch: the loss stays finite and falls.
    @Test(arguments: [false, true])
    func modelsWithMambaLayersTrain(hybrid: Bool) throws {
        let model = try Self.model(hybrid ? [Self.mamba, Self.attention, Self.mamba] : [Self.mamba, Self.mamba])
        model.threads = KernelThreads(2)
        let (batch, length) = (2, 11)
        let data = TransformerLMTests.batch(seed: 5, batch: batch, length: length, vocab: 13)
        let p = model.parameters
        let m = FloatBuffer(count: p.count), v = FloatBuffer(count: p.count)
        m.zero(); v.zero()
        let optimizer = AdamW(weightDecay: 0.01)
        var losses: [Double] = []
        for step in 1...25 {
            p.zeroGradients()
            let loss = model.lossAndGradients(tokens: data.tokens, targets: data.targets, batch: batch, length: length,
                                              gradientScale: 1 / Float(batch * length)) / Double(batch * length)
            losses.append(loss)
            for e in p.entries {
                optimizer.update(parameters: p.values.pointer + e.offset, gradients: p.gradients.pointer + e.offset,
                                 m: m.pointer + e.offset, v: v.pointer + e.offset, count: e.count, step: step, learningRate: 1e-2, decay: e.decays)
            }
        }
        #expect(losses.allSatisfy { $0.isFinite })
        #expect(losses.last! < 0.6 * losses.first!, "loss \(losses.first!) → \(losses.last!)")
    }

    /// Loss and every gradient are bitwise the same on one kernel thread or several.
    @Test func gradientsDoNotDependOnTheThreadCount() throws {
        let data = TransformerLMTests.batch(seed: 8, batch: 3, length: 13, vocab: 13)
        var results: [(Double, [Float])] = []
        for threads in [1, 3] {
            let model = try Self.model([Self.mamba, Self.mamba])
            model.threads = KernelThreads(threads)
            model.parameters.zeroGradients()
            let loss = model.lossAndGradients(tokens: data.tokens, targets: data.targets, batch: 3, length: 13, gradientScale: 1)
            results.append((loss, model.parameters.gradients.array))
        }
        #expect(results[0].0 == results[1].0)
        #expect(results[0].1 == results[1].1)
    }

    /// The capture hook hands distillation each Mamba layer's mixing matrix, the same the
    /// component's `mixingMatrix` computes from the mixer's input.
    @Test func theCaptureHookSeesTheMixingMatrix() throws {
        let model = try Self.model([Self.mamba, Self.attention])
        let (batch, length) = (2, 6)
        let data = TransformerLMTests.batch(seed: 6, batch: batch, length: length, vocab: 13)
        var seen: [String: [Float]] = [:]
        model.capture = { layer, point, values, _ in seen["\(layer).\(point)"] = Array(values) }
        _ = model.lossSum(tokens: data.tokens, targets: data.targets, batch: batch, length: length)
        model.capture = nil
        #expect(seen["0.mixingMatrix"]?.count == batch * 2 * length * length)
        #expect(seen["1.attentionProbabilities"] != nil && seen["1.mixingMatrix"] == nil)
        let input = seen["0.sequenceMixerInput"]!
        var m = [Float](repeating: 0, count: batch * 2 * length * length)
        input.withUnsafeBufferPointer { x in
            model.blocks[0].mamba2Mixer!.mixingMatrix(x.baseAddress!, matrix: &m, context: PassContext(batch: batch, length: length))
        }
        #expect(m == seen["0.mixingMatrix"]!)
        #expect(model.blocks[1].mamba2Mixer == nil)
    }

    @Test func invalidSizesAreNamed() {
        let config = ModelConfig(vocabSize: 5, dModel: 4, blocks: [BlockSpec(sequenceMixer: .mamba2(Mamba2Spec(heads: 0, headDim: 2, chunkSize: 0)),
                                                                             channelMixer: .swiGLU(hidden: 4))])
        #expect(config.problems.contains("mamba2.heads = 0 must be at least 1"))
        #expect(config.problems.contains("mamba2.chunk_size = 0 must be at least 1"))
        #expect(throws: ModelError.self) { try TransformerLM(config: config, seed: 1) }
    }
}
