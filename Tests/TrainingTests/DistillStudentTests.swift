import Distillation
import Foundation
import Kernels
import Models
import TensorCore
import Testing
import Training
import TrainingConfig

/// A tiny teacher: 2 or 3 layers, GQA attention, dense or MoE feed-forward, random init.
func tinyTeacher(layers: Int = 2, moe: Bool = false, seed: UInt64 = 7) throws -> TransformerLM {
    var config = ModelConfig(vocabSize: 32, dModel: 16, layers: layers, heads: 2, kvHeads: 1, ffnHidden: 24, maxSequenceLength: 16)
    if moe {
        config.blocks[layers - 1].channelMixer = .moe(MoESpec(experts: 2, topK: 1, expertHidden: 8, capacityFactor: nil,
                                                               auxLossCoefficient: 0.01, zLossCoefficient: 0.001))
    }
    return try TransformerLM(config: config, seed: seed)
}

func randomTokens(_ count: Int, vocab: Int, rng: inout RNG) -> [Int32] {
    (0..<count).map { _ in Int32(rng.nextInt(below: vocab)) }
}

/// Building the student: config, copied tensors, fresh mixers, hybrids.
@Suite struct DistillStudentTests {
    @Test func everyShellTensorIsTheTeachersAndMixersKeepTheirInit() throws {
        let teacher = try tinyTeacher(moe: true)
        let student = try StudentBuilder.build(teacher: teacher, keepAttention: DistillLayerList(layers: []), chunkSize: 4, seed: 99)
        for layer in 0..<2 {
            #expect(student.config.blocks[layer].sequenceMixer == .mamba2(Mamba2Spec(heads: 2, headDim: 8, chunkSize: 4)))
            #expect(student.config.blocks[layer].channelMixer == teacher.config.blocks[layer].channelMixer)
        }
        let teacherWeights = teacher.parameters.stateDict()
        let fresh = try TransformerLM(config: student.config, seed: 99).parameters.stateDict()
        var copied = 0, mixer = 0
        for (name, tensor) in student.parameters.stateDict().entries {
            if name.contains(".mixer.") {
                #expect(tensor == fresh[name], "\(name) keeps the mixer's initialisation")
                #expect(teacherWeights[name] == nil)
                mixer += 1
            } else {
                #expect(tensor.scalars.map(\.bitPattern) == teacherWeights[name]?.scalars.map(\.bitPattern), "\(name) copied bit for bit")
                copied += 1
            }
        }
        #expect(mixer == 12 && copied == student.parameters.entries.count - 12)
        #expect(student.parameters.entries.contains { $0.name.hasPrefix("model.layers.1.") && $0.name.contains("expert") },
                "the MoE feed-forward was among the copies")
    }

    @Test func aHybridKeepsTheListedAttentionLayer() throws {
        let teacher = try tinyTeacher(layers: 3)
        let student = try StudentBuilder.build(teacher: teacher, keepAttention: DistillLayerList("1")!, chunkSize: 64, seed: 1)
        #expect(StudentBuilder.mambaLayers(student.config) == [0, 2])
        #expect(student.config.blocks[1] == teacher.config.blocks[1])
        let weights = teacher.parameters.stateDict()
        for name in ["q_proj", "k_proj", "v_proj", "o_proj"].map({ "model.layers.1.self_attn.\($0).weight" }) {
            #expect(student.parameters.stateDict()[name] == weights[name], "\(name)")
        }
        #expect(!student.parameters.contains("model.layers.0.self_attn.q_proj.weight"))
        // The student runs.
        var rng = RNG(seed: 3)
        let loss = try student.lossSum(tokens: randomTokens(16, vocab: 32, rng: &rng), targets: randomTokens(16, vocab: 32, rng: &rng), batch: 1, length: 16)
        #expect(loss.isFinite && loss > 0)
    }

    @Test func badTeachersAndListsAreNamed() throws {
        let teacher = try tinyTeacher()
        #expect(throws: DistillError.keptLayerOutOfRange(layer: 2, layers: 2)) {
            try StudentBuilder.build(teacher: teacher, keepAttention: DistillLayerList("2")!, chunkSize: 4, seed: 1)
        }
        var weights = teacher.parameters.stateDict()
        weights = StateDict(weights.entries.filter { $0.name != "model.norm.weight" }.map { ($0.name, $0.tensor) })
        #expect(throws: DistillError.missingTeacherTensor(name: "model.norm.weight", source: "ckpt/step-5")) {
            try StudentBuilder.build(teacher: teacher.config, teacherWeights: weights, keepAttention: DistillLayerList(layers: []),
                                     chunkSize: 4, seed: 1, source: "ckpt/step-5")
        }
        #expect(DistillError.keptLayerOutOfRange(layer: 2, layers: 2).description
                == "distill.keep_attention: layer 2 does not exist in the teacher (layers 0...1); list layers below 2")
    }
}

/// Stage 1 (matrix orientation) on one rank.
@Suite struct DistillStage1Tests {
    private func distiller(keep: String = "", lr: Double = 3e-2, seed: UInt64 = 5) throws -> (Distiller, TransformerLM) {
        let teacher = try tinyTeacher(layers: 3)
        let student = try StudentBuilder.build(teacher: teacher, keepAttention: DistillLayerList(keep)!, chunkSize: 4, seed: 11)
        var settings = DistillSection()
        settings.stage1Lr = lr
        var rng = RNG(seed: seed)
        let distiller = try Distiller(teacher: teacher, student: student, settings: settings, batch: 2, length: 12) {
            randomTokens(24, vocab: 32, rng: &rng)
        }
        return (distiller, teacher)
    }

    @Test func theLossIsExactlyZeroWhenTheTargetIsTheStudentsOwnMatrix() throws {
        let (d, _) = try distiller()
        var rng = RNG(seed: 8)
        let input = (0..<(2 * 12 * 16)).map { _ in Float(rng.nextNormal()) }
        let mixer = d.student.blocks[0].mamba2Mixer!
        let own = FloatBuffer(count: 2 * 2 * 12 * 12)
        input.withUnsafeBufferPointer {
            mixer.mixingMatrix($0.baseAddress!, matrix: own.pointer, includeSkip: true, context: PassContext(batch: 2, length: 12))
        }
        #expect(d.stage1Loss(layer: 0, input: input, target: own.array) == 0)
        // And it is the stated normalisation: shifting every entry by 0.5 costs (T·T·0.25) per (b, h).
        let shifted = own.array.map { $0 + 0.5 }
        #expect(abs(d.stage1Loss(layer: 0, input: input, target: shifted) - 12 * 12 * 0.25) < 1e-3)
    }

    @Test func theLossFallsAndOnlyTheMatrixShapingParametersChange() throws {
        let (d, _) = try distiller()
        let before = d.student.parameters.stateDict()
        var first: [Double] = [], last: [Double] = []
        for step in 0..<30 {
            let losses = try d.stage1Step()
            #expect(losses.count == 3 && losses.allSatisfy { $0.isFinite })
            if step == 0 { first = losses }
            last = losses
        }
        for (layer, (a, b)) in zip(first, last).enumerated() {
            #expect(b < 0.5 * a, "layer \(layer): stage-1 loss \(a) → \(b)")
        }
        let after = d.student.parameters.stateDict()
        let trained = Set(d.stage1Parameters)
        for (name, tensor) in after.entries where !trained.contains(name) {
            #expect(tensor.scalars.map(\.bitPattern) == before[name]!.scalars.map(\.bitPattern), "\(name) must not change in stage 1")
        }
        for name in trained where !name.hasSuffix("conv1d.bias") {
            #expect(after[name] != before[name], "\(name) is trained in stage 1")
        }
        // Inside in_proj, the x and z rows (H·P = 16 rows each, d = 16 columns) do not shape M.
        let (rows, d16) = (2 * 16 + 2 * 16 + 2, 16)
        for layer in d.mambaLayers {
            let name = "model.layers.\(layer).mixer.in_proj.weight"
            let (old, new) = (before[name]!.scalars, after[name]!.scalars)
            #expect(old.count == rows * d16)
            for row in Array(0..<16) + Array(48..<64) {
                let slice = (row * d16)..<((row + 1) * d16)
                #expect(old[slice].map(\.bitPattern) == new[slice].map(\.bitPattern), "layer \(layer) in_proj row \(row) (x or z)")
            }
            let bRows = (16 * d16)..<(48 * d16)
            #expect(old[bRows] != new[bRows], "layer \(layer): the B and C rows are trained")
        }
    }

    @Test func aHybridOrientsOnlyItsMambaLayers() throws {
        let (d, teacher) = try distiller(keep: "1")
        #expect(d.mambaLayers == [0, 2])
        let losses = try d.stage1Step()
        #expect(losses.count == 2)
        let name = "model.layers.1.self_attn.q_proj.weight"
        #expect(d.student.parameters.stateDict()[name] == teacher.parameters.stateDict()[name])
    }
}
