import _TestSupport
import Distillation
import Foundation
import Kernels
import Models
import TensorCore
import Testing
import Training
import TrainingConfig

/// Stage 3 (end-to-end knowledge distillation) on one rank.
@Suite struct DistillStage3Tests {
    static func settings(temperature: Double = 2, weight: Double = 0.5, train: String = "all", lr: Double = 3e-3) -> DistillSection {
        var s = DistillSection()
        s.temperature = temperature; s.dataLossWeight = weight; s.stage3Train = train; s.stage3Lr = lr
        return s
    }

    /// −log softmax(row)[target] in Float64.
    static func crossEntropy(_ row: ArraySlice<Float>, target: Int) -> Double {
        let top = Double(row.max()!)
        let logSum = log(row.reduce(0.0) { $0 + exp(Double($1) - top) }) + top
        return logSum - Double(row[row.startIndex + target])
    }

    @Test func aStudentEqualToItsTeacherHasZeroDistillationLossAndTheTeachersDataLoss() throws {
        let batches = tokenBatches(1, sequences: 2, length: 8)
        let d = try makeDistiller(keep: "0,1", settings: Self.settings(), batches: batches)
        #expect(d.mambaLayers.isEmpty && d.student.config == d.teacher.config)
        let losses = try d.stage3Loss(tokens: batches[0])
        #expect(losses.kd == 0)
        // The data loss is the teacher's own next-token cross-entropy inside each sequence.
        let logits = try d.teacher.logits(tokens: batches[0], batch: 2, length: 8)
        var sum = 0.0
        for b in 0..<2 {
            for t in 0..<7 {
                let row = (b * 8 + t) * 32
                sum += Self.crossEntropy(logits[row..<(row + 32)], target: Int(batches[0][b * 8 + t + 1]))
            }
        }
        #expect(abs(losses.data - sum / 14) < 1e-6, "\(losses.data) vs \(sum / 14)")
        #expect(abs(losses.total - 0.5 * losses.data) < 1e-12)
    }

    @Test func theObjectiveMatchesItsDefinitionAndFiniteDifferencesOnTheLogits() throws {
        let (batch, length, vocab) = (2, 3, 5)
        let student = Fixtures.randoms(batch * length * vocab, seed: 1, scale: 2)
        let teacher = Fixtures.randoms(batch * length * vocab, seed: 2, scale: 2)
        let tokens: [Int32] = [1, 4, 0, 2, 2, 3]
        func objective(_ z: [Float], gradient: UnsafeMutablePointer<Float>? = nil) -> Stage3Losses {
            z.withUnsafeBufferPointer { zp in
                teacher.withUnsafeBufferPointer { yp in
                    Distiller.stage3Objective(student: zp.baseAddress!, teacher: yp.baseAddress!, tokens: tokens, batch: batch, length: length,
                                              vocab: vocab, temperature: 1.7, dataLossWeight: 0.3, gradient: gradient)
                }
            }
        }
        // Definition, in Float64: τ² · mean KL at τ, mean CE over the 2 × 2 predicted tokens.
        var kl = 0.0, ce = 0.0
        for r in 0..<(batch * length) {
            let zs = student[(r * vocab)..<((r + 1) * vocab)].map { Double($0) / 1.7 }
            let ys = teacher[(r * vocab)..<((r + 1) * vocab)].map { Double($0) / 1.7 }
            let (lz, ly) = (log(zs.map(exp).reduce(0, +)), log(ys.map(exp).reduce(0, +)))
            for v in 0..<vocab { kl += exp(ys[v] - ly) * ((ys[v] - ly) - (zs[v] - lz)) }
            if r % length < length - 1 {
                ce += Self.crossEntropy(student[(r * vocab)..<((r + 1) * vocab)], target: Int(tokens[r + 1]))
            }
        }
        let losses = objective(student)
        #expect(abs(losses.kd - 1.7 * 1.7 * kl / 6) < 1e-9 && abs(losses.data - ce / 4) < 1e-9)
        #expect(abs(losses.total - (losses.kd + 0.3 * losses.data)) < 1e-12)
        var analytic = [Float](repeating: 0, count: student.count)
        _ = analytic.withUnsafeMutableBufferPointer { objective(student, gradient: $0.baseAddress!) }
        let numeric = GradientCheck.numeric(at: student.doubles, h: 1e-3) { objective($0.floats).total }
        #expect(GradientCheck.relativeError(analytic, numeric) < 1e-4, "\(analytic) vs \(numeric)")
    }

    /// ∂total/∂θ of the whole student, tensor by tensor, against central differences along a
    /// random direction of that tensor. The model runs in Float32, so ε = 1e-3 and a 1 % bound
    /// (the worst tensor is off by about 0.2 %; a term missing from any gradient is far more).
    @Test func theStudentsGradientMatchesFiniteDifferences() throws {
        let batches = tokenBatches(1, sequences: 2, length: 8)
        let d = try makeDistiller(layers: 2, keep: "1", settings: Self.settings(), batches: batches)
        let p = d.student.parameters
        // Move off the initialisation so no tensor sits at a special point (zero conv bias, unit D).
        var rng = RNG(seed: 9)
        for i in 0..<p.count { p.values.pointer[i] += Float(rng.nextNormal() * 0.05) }
        p.zeroGradients()
        let tokens = batches[0]
        _ = try d.stage3Loss(tokens: tokens, accumulateGradients: true)
        let gradients = p.gradients.array
        let epsilon: Float = 1e-3
        var checked = 0
        for entry in p.entries {
            let direction = Fixtures.randoms(entry.count, seed: UInt64(entry.offset + 1))
            var analytic = 0.0
            for i in 0..<entry.count { analytic += Double(gradients[entry.offset + i]) * Double(direction[i]) }
            let base = p.value(entry.name), saved = Array(UnsafeBufferPointer(start: base, count: entry.count))
            func loss(_ sign: Float) throws -> Double {
                for i in 0..<entry.count { base[i] = saved[i] + sign * epsilon * direction[i] }
                return try d.stage3Loss(tokens: tokens).total
            }
            let numeric = (try loss(1) - loss(-1)) / (2 * Double(epsilon))
            for i in 0..<entry.count { base[i] = saved[i] }
            #expect(abs(analytic - numeric) <= 1e-2 * abs(numeric) + 1e-6, "\(entry.name): analytic \(analytic), numeric \(numeric)")
            #expect(abs(numeric) > 1e-4, "\(entry.name) barely moves the loss (\(numeric)); the check cannot see it")
            checked += 1
        }
        #expect(checked == p.entries.count)
    }

    @Test func aStepIsBitwiseTheSameOnOneOrThreeKernelThreads() throws {
        let batches = tokenBatches(2, sequences: 2, length: 8)
        var results: [([Double], [String: [UInt32]])] = []
        for threads in [KernelThreads.single, KernelThreads(3)] {
            let d = try makeDistiller(moe: true, settings: Self.settings(), batches: batches, threads: threads)
            let losses = try d.step(stage: 3) + d.step(stage: 3)
            results.append((losses, bits(d.exportState())))
        }
        #expect(results[0].0 == results[1].0 && results[0].1 == results[1].1)
    }

    @Test func stepsLowerTheLossAndMixersModeTrainsOnlyTheMixers() throws {
        let batches = tokenBatches(30, sequences: 2, length: 8)
        let all = try makeDistiller(settings: Self.settings(weight: 0, lr: 1e-2), batches: batches)
        #expect(all.stage3Parameters == all.student.parameters.entries.map(\.name))
        // A random teacher's logits are nearly uniform and so are the fresh student's: sharpen
        // both heads alike and make the student's mixers loud so there is something to distil.
        for model in [all.teacher, all.student] {
            let head = model.parameters.contains("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight"
            for i in 0..<model.parameters.entry(head).count { model.parameters.value(head)[i] *= 40 }
        }
        for layer in all.mambaLayers {
            let name = "model.layers.\(layer).mixer.out_proj.weight", p = all.student.parameters
            let noise = Fixtures.randoms(p.entry(name).count, seed: UInt64(layer + 1), scale: 0.5)
            for i in noise.indices { p.value(name)[i] += noise[i] }
        }
        var first = Stage3Losses(kd: 0, data: 0, total: 0), last = first
        for step in 0..<30 {
            let losses = try all.stage3Step()
            if step == 0 { first = losses }
            last = losses
        }
        #expect(first.kd > 0.05 && last.kd < 0.5 * first.kd, "kd \(first.kd) → \(last.kd)")
        #expect(last.total == last.kd, "data loss weight 0")
        #expect(all.stage3StepsTaken == 30)

        let mixers = try makeDistiller(settings: Self.settings(train: "mixers"), batches: batches)
        #expect(mixers.stage3Parameters == mixers.stage2Parameters)
        let before = mixers.student.parameters.stateDict()
        let viaStep = try mixers.step(stage: 3)
        #expect(viaStep.count == 3 && viaStep[2] == viaStep[0] + 0.5 * viaStep[1])
        let trained = Set(mixers.stage3Parameters)
        for (name, tensor) in mixers.student.parameters.stateDict().entries {
            if trained.contains(name) {
                #expect(tensor != before[name], "\(name) is trained in stage 3 (mixers)")
            } else {
                #expect(tensor.scalars.map(\.bitPattern) == before[name]!.scalars.map(\.bitPattern), "\(name) must not change")
            }
        }
    }
}
