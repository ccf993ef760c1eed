import Kernels
import TensorCore

/// The Llama feed-forward (`mlp`): down(silu(gate(x)) ⊙ up(x)), hidden width F.
final class SwiGLUFeedForward: LayerComponent {
    let dModel: Int
    let hidden: Int
    let residualStd: Double
    private var gate = BoundParameter(), up = BoundParameter(), down = BoundParameter()
    private var cache = ActivationCache()   // gate, up, hidden (each (B·T, F))
    private var input: UnsafePointer<Float>?

    init(dModel: Int, hidden: Int, residualStd: Double) {
        self.dModel = dModel
        self.hidden = hidden
        self.residualStd = residualStd
    }

    var declarations: [ParameterDeclaration] {
        [ParameterDeclaration("mlp.gate_proj.weight", [hidden, dModel], .normal(std: 0.02)),
         ParameterDeclaration("mlp.up_proj.weight", [hidden, dModel], .normal(std: 0.02)),
         ParameterDeclaration("mlp.down_proj.weight", [dModel, hidden], .normal(std: residualStd))]
    }

    func bind(to parameters: ParameterSet, prefix: String) {
        gate = BoundParameter(parameters, prefix + "mlp.gate_proj.weight")
        up = BoundParameter(parameters, prefix + "mlp.up_proj.weight")
        down = BoundParameter(parameters, prefix + "mlp.down_proj.weight")
    }

    func forward(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) {
        let (n, d, f, threads) = (c.rows, dModel, hidden, c.threads)
        cache.ensure(rows: n, widths: [f, f, f])
        input = x
        Matmul.linearForward(x: x, weight: gate.value, y: cache[0], rows: n, inFeatures: d, outFeatures: f, threads: threads, precision: c.precision)
        Matmul.linearForward(x: x, weight: up.value, y: cache[1], rows: n, inFeatures: d, outFeatures: f, threads: threads, precision: c.precision)
        // out += hidden · Wdownᵀ; in bf16 the hidden values are stored rounded (only products read them).
        if c.precision == .bf16 {
            SwiGLU.forward(gate: cache[0], up: cache[1], bf16: Self.bits(cache[2]), count: n * f, threads: threads)
            BF16Matmul.linearForward(x: .bf16(Self.bits(cache[2])), weight: down.value, y: out, rows: n, inFeatures: f, outFeatures: d,
                                     beta: 1, threads: threads)
            return
        }
        SwiGLU.forward(gate: cache[0], up: cache[1], out: cache[2], count: n * f, threads: threads)
        Matmul.gemm(transposeA: false, transposeB: true, m: n, n: d, k: f, a: cache[2], lda: f,
                    b: down.value, ldb: f, beta: 1, c: out, ldc: d, threads: threads)
    }

    /// A Float32 buffer's memory holding bf16 bits (written and read only by the bf16 kernels).
    static func bits(_ buffer: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<UInt16> {
        UnsafeMutableRawPointer(buffer).assumingMemoryBound(to: UInt16.self)
    }

    func backward(_ dOut: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) {
        guard let x = input else { preconditionFailure("SwiGLUFeedForward.backward before forward") }
        let (n, d, f, threads) = (c.rows, dModel, hidden, c.threads)
        let dHidden = c.scratch.buffer("swiglu.dHidden", count: n * f)
        if c.precision == .bf16 {   // hidden, dGate and dUp as bf16 bits (SwiGLU rounds them as it makes them)
            let dGate = Self.bits(c.scratch.buffer("swiglu.dGate", count: (n * f + 1) / 2))
            let dUp = Self.bits(c.scratch.buffer("swiglu.dUp", count: (n * f + 1) / 2))
            BF16Matmul.linearBackward(x: .bf16(Self.bits(cache[2])), weight: down.value, dy: .float(dOut), dx: dHidden,
                                      dWeight: down.gradient, rows: n, inFeatures: f, outFeatures: d, threads: threads)
            SwiGLU.backward(gate: cache[0], up: cache[1], dOut: dHidden, bf16: dGate, dUp: dUp, count: n * f, threads: threads)
            BF16Matmul.linearBackward(x: .float(x), weight: gate.value, dy: .bf16(dGate), dx: dx, dWeight: gate.gradient,
                                      rows: n, inFeatures: d, outFeatures: f, threads: threads)
            BF16Matmul.linearBackward(x: .float(x), weight: up.value, dy: .bf16(dUp), dx: dx, dWeight: up.gradient,
                                      rows: n, inFeatures: d, outFeatures: f, accumulateInput: true, threads: threads)
            return
        }
        let dGate = c.scratch.buffer("swiglu.dGate", count: n * f)
        let dUp = c.scratch.buffer("swiglu.dUp", count: n * f)
        Matmul.linearBackward(x: cache[2], weight: down.value, dy: dOut, dx: dHidden, dWeight: down.gradient,
                              rows: n, inFeatures: f, outFeatures: d, threads: threads, precision: c.precision)
        SwiGLU.backward(gate: cache[0], up: cache[1], dOut: dHidden, dGate: dGate, dUp: dUp, count: n * f, threads: threads)
        Matmul.linearBackward(x: x, weight: gate.value, dy: dGate, dx: dx, dWeight: gate.gradient,
                              rows: n, inFeatures: d, outFeatures: f, threads: threads, precision: c.precision)
        Matmul.linearBackward(x: x, weight: up.value, dy: dUp, dx: dx, dWeight: up.gradient,
                              rows: n, inFeatures: d, outFeatures: f, accumulateInput: true, threads: threads, precision: c.precision)
    }

    var matmulFlopsPerToken: Double { 2.0 * Double(dModel) * Double(3 * hidden) }
}

extension ChannelMixerKind {
    public static let swiGLU = ChannelMixerKind(name: "swiglu")
}

extension SwiGLUSpec: ChannelMixerSettings {
    public var kind: ChannelMixerKind { .swiGLU }

    public func makeComponent(dModel: Int, residualStd: Double, sharding: ExpertSharding) -> LayerComponent {
        SwiGLUFeedForward(dModel: dModel, hidden: hidden, residualStd: residualStd)
    }

    public func problems(at: String) -> [String] { hidden < 1 ? ["model.ffn_hidden = \(hidden) must be at least 1\(at)"] : [] }

    public var phiMambaMLP: [String: Any] { ["intermediate_size": hidden, "hidden_act": "silu"] }
}
