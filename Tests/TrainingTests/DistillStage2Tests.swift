import _TestSupport
import Collectives
import Distillation
import Foundation
import Kernels
import Models
import TensorCore
import Testing
import Training
import TrainingConfig

/// A distiller of `tinyTeacher(layers:moe:)` whose batches are `batches[0], batches[1], …` from
/// `start` on (each batch × length tokens), on `communicator` (its ranks the data axis) when given.
func makeDistiller(layers: Int = 2, moe: Bool = false, keep: String = "", settings: DistillSection = DistillSection(), batch: Int = 2, length: Int = 8,
                   batches: [[Int32]], start: Int = 0, threads: KernelThreads = .single,
                   communicator: Communicator? = nil) throws -> Distiller {
    let teacher = try tinyTeacher(layers: layers, moe: moe)
    let student = try StudentBuilder.build(teacher: teacher, keepAttention: DistillLayerList(keep)!, chunkSize: 4, seed: 11)
    var next = start
    return try Distiller(teacher: teacher, student: student, settings: settings, batch: batch, length: length, threads: threads,
                         grid: try communicator.map { try ProcessGrid(world: $0, layout: GridLayout(data: $0.size)) }) {
        defer { next += 1 }
        return batches[next]
    }
}

extension Distiller {
    /// The student, every stage's moments of the parameters it trains
    /// (`distill.stage{k}.exp_avg.P`, `distill.stage{k}.exp_avg_sq.P`) and its step counter
    /// (`distill.stage{k}.steps`): what an exact continuation needs, for comparisons.
    func exportState() -> StateDict {
        var pairs = student.parameters.stateDict().entries.map { ($0.name, $0.tensor) }
        for (k, optimizer) in optimizers.enumerated() {
            let moments = optimizer.stateDict()
            for name in parameters(ofStage: k + 1) {
                for suffix in ["exp_avg", "exp_avg_sq"] { pairs.append(("distill.stage\(k + 1).\(suffix).\(name)", moments[name + "." + suffix]!)) }
            }
            pairs.append(("distill.stage\(k + 1).steps", Tensor(shape: [1], scalars: [Float(optimizer.stepsTaken)])))
        }
        return StateDict(pairs)
    }

    /// Restores what `exportState` gave (the public loaders check names and shapes).
    func restore(state: StateDict) throws {
        try student.parameters.load(StateDict(state.entries.filter { !$0.name.hasPrefix("distill.") }.map { ($0.name, $0.tensor) }), source: "state")
        for (k, optimizer) in optimizers.enumerated() {
            let prefix = "distill.stage\(k + 1)."
            let moments = student.parameters.entries.flatMap { e in
                ["exp_avg", "exp_avg_sq"].map { (e.name + "." + $0, state[prefix + $0 + "." + e.name] ?? Tensor(zeros: e.shape)) }
            }
            try optimizer.load(StateDict(moments), stepsTaken: Int(state[prefix + "steps"]!.scalars[0]), source: "state")
        }
    }
}

/// `count` batches of `sequences` × `length` random tokens (vocabulary 32).
func tokenBatches(_ count: Int, sequences: Int, length: Int, seed: UInt64 = 5) -> [[Int32]] {
    var rng = RNG(seed: seed)
    return (0..<count).map { _ in randomTokens(sequences * length, vocab: 32, rng: &rng) }
}

/// The bits of every tensor of a state dict, by name.
func bits(_ state: StateDict) -> [String: [UInt32]] {
    Dictionary(uniqueKeysWithValues: state.entries.map { ($0.name, $0.tensor.scalars.map(\.bitPattern)) })
}

/// Stage 2 (hidden-state alignment) on one rank.
@Suite struct DistillStage2Tests {
    @Test func theLossIsExactlyZeroWhenTheTargetIsTheBlocksOwnOutputAndIsTheMeanTokenDistance() throws {
        let d = try makeDistiller(batches: tokenBatches(1, sequences: 2, length: 8))
        let input = Fixtures.randoms(2 * 8 * 16, seed: 3)
        let own = try d.student.blockForward(layer: 1, input: input, batch: 2, length: 8)
        #expect(try d.stage2Loss(layer: 1, input: input, target: own) == 0)
        // Shifting every token's target by a vector of norm 0.5 costs exactly 0.5 per token on average.
        var shifted = own
        for t in 0..<16 { shifted[t * 16] += 0.3; shifted[t * 16 + 5] -= 0.4 }
        #expect(try abs(d.stage2Loss(layer: 1, input: input, target: shifted) - 0.5) < 1e-6)
        // The gradient of a zero loss is zero: accumulating it changes nothing.
        d.student.parameters.zeroGradients()
        #expect(try d.stage2Loss(layer: 1, input: input, target: own, accumulateGradients: true) == 0)
        #expect(d.student.parameters.gradients.array.allSatisfy { $0 == 0 })
    }

    @Test func theLossFallsInEveryLayerAndOnlyTheMixersChange() throws {
        var settings = DistillSection()
        settings.stage2Lr = 1e-2
        let d = try makeDistiller(layers: 3, settings: settings, batches: tokenBatches(40, sequences: 2, length: 8))
        #expect(d.mambaLayers == [0, 1, 2])
        let before = d.student.parameters.stateDict()
        var first: [Double] = [], last: [Double] = []
        for step in 0..<40 {
            let losses = try d.stage2Step()
            #expect(losses.count == 3 && losses.allSatisfy { $0.isFinite && $0 > 0 })
            if step == 0 { first = losses }
            last = losses
        }
        #expect(d.stage2StepsTaken == 40 && d.stage1StepsTaken == 0)
        for (layer, (a, b)) in zip(first, last).enumerated() {
            #expect(b < 0.5 * a, "layer \(layer): stage-2 loss \(a) → \(b)")
        }
        let after = d.student.parameters.stateDict()
        let trained = Set(d.stage2Parameters)
        #expect(trained.count == 3 * 6, "six mixer tensors per Mamba layer: \(d.stage2Parameters)")
        for (name, tensor) in after.entries {
            if trained.contains(name) {
                #expect(tensor != before[name], "\(name) is trained in stage 2")
            } else {
                #expect(tensor.scalars.map(\.bitPattern) == before[name]!.scalars.map(\.bitPattern), "\(name) must not change in stage 2")
            }
        }
    }

    @Test func layersTrainOnTheTeachersInputsIndependently() throws {
        // Layer 1's loss in a step does not depend on layer 0's student parameters: it sees the
        // teacher's input to layer 1.
        let batches = tokenBatches(1, sequences: 2, length: 8)
        let a = try makeDistiller(batches: batches), b = try makeDistiller(batches: batches)
        let name = "model.layers.0.mixer.out_proj.weight", p = b.student.parameters
        for i in 0..<p.entry(name).count { p.value(name)[i] *= 3 }
        let (la, lb) = (try a.stage2Step(), try b.stage2Step())
        #expect(la[1] == lb[1] && la[0] != lb[0], "\(la) vs \(lb)")
    }

    @Test func aMixtureOfExpertsStudentAlignsThroughItsFrozenExperts() throws {
        var settings = DistillSection()
        settings.stage2Lr = 1e-2
        let d = try makeDistiller(moe: true, settings: settings, batches: tokenBatches(20, sequences: 2, length: 8))
        let before = d.student.parameters.stateDict()
        var first: [Double] = [], last: [Double] = []
        for step in 0..<20 {
            let losses = try d.stage2Step()
            if step == 0 { first = losses }
            last = losses
        }
        #expect(last[1] < 0.7 * first[1], "the MoE layer's stage-2 loss \(first[1]) → \(last[1])")
        let trained = Set(d.stage2Parameters)
        for (name, tensor) in d.student.parameters.stateDict().entries where !trained.contains(name) {
            #expect(tensor.scalars.map(\.bitPattern) == before[name]!.scalars.map(\.bitPattern), "\(name) must not change in stage 2")
        }
    }

    @Test func aHybridAlignsOnlyItsMambaLayersAndStepDispatches() throws {
        let d = try makeDistiller(layers: 3, keep: "1", batches: tokenBatches(2, sequences: 2, length: 8))
        #expect(d.mambaLayers == [0, 2] && d.stage2Parameters.allSatisfy { !$0.hasPrefix("model.layers.1.") })
        #expect(try d.step(stage: 2).count == 2)
        #expect(throws: DistillError.noSuchStage(4)) { try d.step(stage: 4) }
        #expect(try d.step(stage: 1).count == 2)
        #expect(d.stage1StepsTaken == 1 && d.stage2StepsTaken == 1)
    }
}
