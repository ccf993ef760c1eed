import Checkpointing
import Collectives
import Foundation
import Models
import Testing
import TensorCore
import Training
import TrainingConfig
import _TestSupport

/// The proof that a sequence mixer plugs in through the table: `MovingAverageMixer` (its own
/// file, outside `Sources/`) is registered, matches its naive Float64 twin and finite
/// differences, and trains, checkpoints, resumes, evaluates and generates like a built-in kind.
@Suite struct MovingAverageMixerTests {
    init() { SequenceMixerKind.register(.movingAverage) }

    /// out = Wo · movingAverage(Wv · x), in Float64.
    static func reference(x: [Double], wv: [Double], wo: [Double], batch: Int, length: Int, d: Int, width: Int) -> [Double] {
        func linear(_ x: [Double], _ w: [Double]) -> [Double] {
            (0..<(x.count / d)).flatMap { r in (0..<d).map { o in (0..<d).reduce(0.0) { $0 + x[r * d + $1] * w[o * d + $1] } } }
        }
        let v = linear(x, wv)
        var a = [Double](repeating: 0, count: v.count)
        for b in 0..<batch {
            for t in 0..<length {
                let n = min(width, t + 1)
                for s in (t - n + 1)...t { for j in 0..<d { a[(b * length + t) * d + j] += v[(b * length + s) * d + j] / Double(n) } }
            }
        }
        return linear(a, wo)
    }

    @Test func forwardAndBackwardMatchTheNaiveTwinAndFiniteDifferences() {
        let (batch, length, d, width) = (2, 7, 5, 3)
        let mixer = MovingAverageMixer(width: width, dModel: d, residualStd: 0.1)
        let parameters = ParameterSet(mixer.declarations.map { $0.prefixed("l.") })
        parameters.initialize(seed: 3)
        for i in 0..<parameters.count { parameters.values[i] *= 20 }   // weights of order one
        mixer.bind(to: parameters, prefix: "l.")
        let x = Fixtures.randoms(batch * length * d, seed: 1), probe = Fixtures.randoms(batch * length * d, seed: 2)
        let wv = Array(parameters.values.buffer[parameters.entry("l.mixer.v_proj.weight").range]).doubles
        let wo = Array(parameters.values.buffer[parameters.entry("l.mixer.o_proj.weight").range]).doubles
        let context = PassContext(batch: batch, length: length)
        var out = [Float](repeating: 0, count: x.count), dx = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { x in
            out.withUnsafeMutableBufferPointer { mixer.forward(x.baseAddress!, addingTo: $0.baseAddress!, layer: 0, context: context) }
            probe.withUnsafeBufferPointer { p in
                dx.withUnsafeMutableBufferPointer { mixer.backward(p.baseAddress!, dx: $0.baseAddress!, layer: 0, context: context) }
            }
        }
        let want = Self.reference(x: x.doubles, wv: wv, wo: wo, batch: batch, length: length, d: d, width: width)
        #expect(GradientCheck.relativeError(out, want) < 1e-5)
        let numericDx = GradientCheck.numeric(at: x.doubles) {
            GradientCheck.dot(Self.reference(x: $0, wv: wv, wo: wo, batch: batch, length: length, d: d, width: width), probe.doubles)
        }
        #expect(GradientCheck.relativeError(dx, numericDx) < 1e-4)
        let numericDWv = GradientCheck.numeric(at: wv) {
            GradientCheck.dot(Self.reference(x: x.doubles, wv: $0, wo: wo, batch: batch, length: length, d: d, width: width), probe.doubles)
        }
        let dWv = Array(parameters.gradients.buffer[parameters.entry("l.mixer.v_proj.weight").range])
        #expect(GradientCheck.relativeError(dWv, numericDWv) < 1e-4)
    }

    @Test func theKindIsAConfigValueAndRefusesAShardedSequence() throws {
        let config = try RunConfig(file: nil, overrides: ["model.layers=3", "model.d_model=32", "model.heads=4",
                                                          "model.sequence_mixer=moving_average", "model.attention_layers=1"])
        #expect(config.modelConfig.mixerKinds == ["moving_average", "attention", "moving_average"])
        #expect(config.modelConfig.layers(of: .movingAverage) == [0, 2])
        let results = InProcessCommunicator.run(size: 2) { comm -> String in
            let grid = try ProcessGrid(world: comm, data: 1, sequence: 2)
            do { _ = try TransformerLM(config: config.modelConfig, seed: 1, grid: grid); return "built" } catch { return "\(error)" }
        }
        for result in results {
            #expect(try result.get() == ModelError.sequenceParallelUnsupported(layer: 0, kind: "moving_average").description)
        }
    }

    @Test(arguments: [1, 2])
    func trainsCheckpointsResumesEvaluatesAndGenerates(ranks: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory, bytes: 20_000)
        let overrides = ["model.sequence_mixer=moving_average", "model.attention_layers=1"]
        let straight = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("straight"), steps: 6, batch: 4) + overrides)
        let interrupted = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 6, batch: 4) + overrides)
        let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 120) { comm -> ([Double], [Double], Double, Double) in
            let trainer = try Trainer(config: straight, world: comm)
            let reference = try trainer.run(resume: false).losses
            let resumed = try Trainer(config: interrupted, world: comm).run(resume: false, stopAt: 3).losses
                + Trainer(config: interrupted, world: comm).run(resume: true).losses
            let fresh = try Trainer(config: interrupted, world: comm)
            _ = try fresh.resumeFromLatest()
            return (reference, resumed, try trainer.validationLoss(), try fresh.validationLoss())
        }
        for result in results {
            let (reference, resumed, validation, evaluated) = try result.get()
            #expect(reference.count == 6 && resumed == reference, "resumed bit for bit")
            #expect(validation.isFinite && evaluated == validation, "evaluates the checkpoint as trained")
        }

        // The last checkpoint rebuilds the model through run.yaml and the table, and describes its mixers.
        let root = URL(fileURLWithPath: directory.file("run/checkpoints"))
        let url = try #require(CheckpointSummary.all(root: root).filter(\.complete).max { $0.step < $1.step }?.url)
        let contents = try CheckpointStore.read(url)
        let loaded = try RunConfig(resolvedYAML: contents.runConfig, source: url.path + "/run.yaml")
        #expect(loaded.modelConfig == interrupted.modelConfig)
        #expect(contents.huggingFaceConfig["mixer_types"] as? [String] == ["moving_average", "llama_attention"])
        #expect(CheckpointSummary.mixers(huggingFaceConfig: contents.huggingFaceConfig) == "moving_average in layer 0; attention in layer 1")
        let model = try TransformerLM(config: loaded.modelConfig, seed: 0)
        try model.parameters.load(contents.model, source: url.path)

        // Incremental decoding equals the full forward pass.
        try expectIncrementalDecodingMatchesFullForward(model, steps: 12)
    }
}
