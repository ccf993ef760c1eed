import Testing
@testable import Models
import Kernels
import TensorCore
import _TestSupport

/// One `MixtureOfExperts` layer on its own (one rank): parameters with chosen values, a forward
/// pass adding into zeros, a backward pass from a given dOut.
final class MoEHarness {
    let spec: MoESpec
    let dModel: Int
    let layer: MixtureOfExperts
    let parameters: ParameterSet

    init(_ spec: MoESpec, dModel: Int, seed: UInt64 = 5) {
        self.spec = spec
        self.dModel = dModel
        layer = MixtureOfExperts(spec: spec, dModel: dModel, residualStd: 0.02)
        parameters = ParameterSet(layer.declarations)
        layer.bind(to: parameters, prefix: "")
        // Matrices ~ N(0, 1/fan_in): routing and SwiGLU far from linear.
        var rng = RNG(seed: seed, stream: 0x40E)
        for e in parameters.entries {
            for i in e.range { parameters.values[i] = Float(rng.nextNormal() / Double(e.shape[1]).squareRoot()) }
        }
    }

    func set(_ name: String, _ values: [Float]) {
        precondition(values.count == parameters.entry(name).count)
        for (i, v) in values.enumerated() { parameters.values[parameters.entry(name).offset + i] = v }
    }

    func weights() -> [String: [Double]] {
        Dictionary(uniqueKeysWithValues: parameters.entries.map { ($0.name, Array(parameters.values.buffer[$0.range]).doubles) })
    }

    var reference: ReferenceMoE {
        ReferenceMoE(experts: spec.experts, topK: spec.topK, hidden: spec.expertHidden, dModel: dModel, capacityFactor: spec.capacityFactor)
    }

    /// out = layer(x) (rows × d, added to zeros), the weighted auxiliary losses and the
    /// routing summary; the context is kept for `backward`.
    private(set) var context: PassContext?
    private var input = FloatBuffer(count: 0)

    @discardableResult
    func forward(_ x: [Float], rows: Int, threads: KernelThreads = .single) -> (out: [Float], aux: Double, z: Double, summary: RoutingSummary) {
        let c = PassContext(batch: 1, length: rows, threads: threads)
        context = c
        input = FloatBuffer(count: x.count)   // the layer keeps a pointer to its input until backward
        for (i, v) in x.enumerated() { input[i] = v }
        var out = [Float](repeating: 0, count: rows * dModel)
        // One rank: nothing communicates, so nothing should throw; if it does, the test fails.
        do { try out.withUnsafeMutableBufferPointer { try layer.forward(input.pointer, addingTo: $0.baseAddress!, layer: 0, context: c) } } catch { Issue.record(error) }
        let losses = c.auxiliaryLosses.values
        return (out, losses["moe_aux"]?[0] ?? .nan, losses["moe_z"]?[0] ?? .nan, c.routing[0]!)
    }

    /// dx of the last forward pass, for dOut and gradientScale; parameter gradients start at zero.
    func backward(_ dOut: [Float], gradientScale: Float) -> [Float] {
        let c = context!
        c.gradientScale = gradientScale
        parameters.zeroGradients()
        var dx = [Float](repeating: .nan, count: input.count)
        do {
            try dOut.withUnsafeBufferPointer { d in
                try dx.withUnsafeMutableBufferPointer { try layer.backward(d.baseAddress!, dx: $0.baseAddress!, layer: 0, context: c) }
            }
        } catch { Issue.record(error) }
        return dx
    }
}
