import Kernels
import Models
import TensorCore

/// A sequence mixer defined outside `Sources/`, through the public mixer table only: the causal
/// moving average of a projection,
///
///     v = x · Wvᵀ                                   (B·T, d)
///     a_t = (v_{t−n+1} + … + v_t) / n,  n = min(width, t + 1)   (within each sample)
///     out += a · Woᵀ
///
/// Parameters (relative to the block): `mixer.v_proj.weight` (d, d), `mixer.o_proj.weight`
/// (d, d, initialised with the residual scale). It does not shard the sequence (refused, naming
/// it), and runs incrementally on the last width − 1 values of v.
struct MovingAverageSpec: SequenceMixerSettings, Equatable {
    var width: Int

    var kind: SequenceMixerKind { .movingAverage }

    func makeComponent(dModel: Int, residualStd: Double) -> LayerComponent {
        MovingAverageMixer(width: width, dModel: dModel, residualStd: residualStd)
    }

    func problems(dModel: Int, at: String) -> [String] { width < 1 ? ["moving_average.width = \(width) must be at least 1\(at)"] : [] }

    func phiMambaCoreInput(model: ModelConfig) -> [String: Any] { ["width": width, "d_model": model.dModel] }
}

extension SequenceMixerKind {
    /// `model.sequence_mixer: moving_average` once registered: a width of 4 whatever the keys.
    static let movingAverage = SequenceMixerKind(name: "moving_average", coreName: "moving_average", shardsSequence: false) { _ in
        MovingAverageSpec(width: 4)
    }
}

final class MovingAverageMixer: LayerComponent, IncrementalSequenceMixer {
    let width: Int, dModel: Int, residualStd: Double
    private var wv = BoundParameter(), wo = BoundParameter()
    private var cache = ActivationCache()   // v, a (B·T, d)
    private var input: UnsafePointer<Float>?

    init(width: Int, dModel: Int, residualStd: Double) { self.width = width; self.dModel = dModel; self.residualStd = residualStd }

    var declarations: [ParameterDeclaration] {
        [ParameterDeclaration("mixer.v_proj.weight", [dModel, dModel], .normal(std: 0.02)),
         ParameterDeclaration("mixer.o_proj.weight", [dModel, dModel], .normal(std: residualStd))]
    }

    func bind(to parameters: ParameterSet, prefix: String) {
        wv = BoundParameter(parameters, prefix + "mixer.v_proj.weight")
        wo = BoundParameter(parameters, prefix + "mixer.o_proj.weight")
    }

    var matmulFlopsPerToken: Double { 4 * Double(dModel * dModel) }

    /// a (rows, d) = the causal moving average of v (rows, d), rows being `samples` samples of `length`.
    static func average(_ v: UnsafePointer<Float>, into a: UnsafeMutablePointer<Float>, samples: Int, length: Int, d: Int, width: Int) {
        for b in 0..<samples {
            for t in 0..<length {
                let n = min(width, t + 1), row = a + (b * length + t) * d
                for j in 0..<d { row[j] = 0 }
                for s in (t - n + 1)...t { for j in 0..<d { row[j] += v[(b * length + s) * d + j] } }
                for j in 0..<d { row[j] /= Float(n) }
            }
        }
    }

    func forward(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) {
        let d = dModel
        cache.ensure(rows: c.rows, widths: [d, d])
        input = x
        Matmul.linearForward(x: x, weight: wv.value, y: cache[0], rows: c.rows, inFeatures: d, outFeatures: d, threads: c.threads)
        Self.average(cache[0], into: cache[1], samples: c.batch, length: c.length, d: d, width: width)
        let projected = c.scratch.buffer("movingAverage.out", count: c.rows * d)
        Matmul.linearForward(x: cache[1], weight: wo.value, y: projected, rows: c.rows, inFeatures: d, outFeatures: d, threads: c.threads)
        for i in 0..<(c.rows * d) { out[i] += projected[i] }
    }

    func backward(_ dOut: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) {
        guard let x = input else { preconditionFailure("MovingAverageMixer.backward before forward") }
        let d = dModel
        let dA = c.scratch.buffer("movingAverage.dA", count: c.rows * d), dV = c.scratch.buffer("movingAverage.dV", count: c.rows * d)
        Matmul.linearBackward(x: cache[1], weight: wo.value, dy: dOut, dx: dA, dWeight: wo.gradient, rows: c.rows, inFeatures: d,
                              outFeatures: d, threads: c.threads)
        dV.update(repeating: 0, count: c.rows * d)
        for b in 0..<c.batch {
            for t in 0..<c.length {
                let n = min(width, t + 1), row = dA + (b * c.length + t) * d
                for s in (t - n + 1)...t { for j in 0..<d { dV[(b * c.length + s) * d + j] += row[j] / Float(n) } }
            }
        }
        Matmul.linearBackward(x: x, weight: wv.value, dy: dV, dx: dx, dWeight: wv.gradient, rows: c.rows, inFeatures: d,
                              outFeatures: d, threads: c.threads)
    }

    func makeIncrementalState(parameters: ParameterSet, prefix: String, plan: KVShardPlan) -> IncrementalMixerState {
        MovingAverageState(width: width, dModel: dModel, wv: UnsafePointer(parameters.value(prefix + "mixer.v_proj.weight")),
                           wo: UnsafePointer(parameters.value(prefix + "mixer.o_proj.weight")))
    }
}

/// The incremental form: the values v of the last width − 1 positions, oldest first.
final class MovingAverageState: IncrementalMixerState {
    let width: Int, dModel: Int
    let wv: UnsafePointer<Float>, wo: UnsafePointer<Float>
    private(set) var recent: [[Float]] = []

    init(width: Int, dModel: Int, wv: UnsafePointer<Float>, wo: UnsafePointer<Float>) {
        self.width = width; self.dModel = dModel; self.wv = wv; self.wo = wo
    }

    var cachedPositions: Int { recent.count }
    var cacheBytes: Int { (width - 1) * dModel * MemoryLayout<Float>.size }
    var usedBytes: Int { recent.count * dModel * MemoryLayout<Float>.size }

    func prefill(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, count: Int, context c: DecodeContext) throws {
        for t in 0..<count { try decode(x + t * dModel, addingTo: out + t * dModel, context: c) }
    }

    func decode(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, context c: DecodeContext) throws {
        let d = dModel
        var v = [Float](repeating: 0, count: d), a = [Float](repeating: 0, count: d), y = [Float](repeating: 0, count: d)
        v.withUnsafeMutableBufferPointer { Matmul.linearForward(x: x, weight: wv, y: $0.baseAddress!, rows: 1, inFeatures: d, outFeatures: d) }
        recent.append(v)
        for row in recent { for j in 0..<d { a[j] += row[j] } }
        for j in 0..<d { a[j] /= Float(recent.count) }
        if recent.count == width { recent.removeFirst() }
        a.withUnsafeBufferPointer { a in
            y.withUnsafeMutableBufferPointer { Matmul.linearForward(x: a.baseAddress!, weight: wo, y: $0.baseAddress!, rows: 1, inFeatures: d, outFeatures: d) }
        }
        for j in 0..<d { out[j] += y[j] }
    }

    func fillSynthetic(positions: Int, extra: Int, rng: inout RNG) {
        recent = (0..<min(positions, width - 1)).map { _ in (0..<dModel).map { _ in Float(rng.nextUniform() * 0.2 - 0.1) } }
    }
}
