import Testing
import Checkpointing
import Collectives
import Training
import TrainingConfig
import _TestSupport

/// `parallel.reduction: ordered`: 1, 2, 3, 4 data ranks give the same bits, Float32 and bf16
/// (`OrderedReduction`: every micro-batch's gradient from zero, summed in global order).
@Suite struct OrderedReductionTests {
    static let steps = 12
    static let ordered = ["parallel.reduction=ordered", "train.micro_batch=1"]

    static func train(ranks: Int, extra: [String], data: String, run: String) throws -> [RankRun] {
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: run, steps: steps) + extra)
        return try trainInProcess(config, ranks: ranks, steps: steps)
    }

    /// Every rank's losses, gradient norms and parameters are `single`'s bit for bit.
    static func expectOneRanksBits(_ parallel: [RankRun], _ single: RankRun, _ label: String) {
        for (rank, seen) in parallel.enumerated() {
            #expect(seen.losses == single.losses, "\(label), rank \(rank): losses \(seen.losses) vs \(single.losses)")
            #expect(seen.gradientNorms == single.gradientNorms, "\(label), rank \(rank): gradient norms \(seen.gradientNorms) vs \(single.gradientNorms)")
            #expect(seen.parameters == single.parameters, "\(label), rank \(rank): \(DataParallelExactnessTests.worst(seen.parameters, single.parameters))")
        }
    }

    /// Losses, gradient norms and parameters of 2, 3, 4 data ranks equal one rank's bit for bit
    /// after 12 steps. The comparison has teeth: under allreduce, 4 ranks' parameters are not
    /// one rank's bits, and ordered changes one rank's numbers against allreduce (hence hashed).
    @Test(arguments: ["fp32", "bf16"])
    func dataRanksGiveOneRanksBits(precision: String) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let extra = Self.ordered + ["train.precision=\(precision)"]
        let single = try Self.train(ranks: 1, extra: extra, data: data, run: directory.file("run1"))[0]
        #expect(single.losses.last! < single.losses.first! - 0.3, "the tiny model should learn: \(single.losses)")
        #expect(single.gradientNorms.allSatisfy { $0 > 0 && $0.isFinite } && !single.parameters.isEmpty)
        for ranks in [2, 3, 4] {
            let parallel = try Self.train(ranks: ranks, extra: extra, data: data, run: directory.file("run\(ranks)"))
            Self.expectOneRanksBits(parallel, single, "\(precision), \(ranks) ranks")
        }
        let plain = ["train.micro_batch=1", "train.precision=\(precision)"]
        let allreduce1 = try Self.train(ranks: 1, extra: plain, data: data, run: directory.file("a1"))[0]
        let allreduce4 = try Self.train(ranks: 4, extra: plain, data: data, run: directory.file("a4"))[0]
        #expect(allreduce4.parameters != allreduce1.parameters, "allreduce should not give one rank's bits on 4 ranks (else this test shows nothing)")
        #expect(maxRelativeError(allreduce4.parameters, allreduce1.parameters) < (precision == "bf16" ? 5e-4 : 1e-5))
        #expect(single.parameters != allreduce1.parameters, "ordered sums in another order than allreduce's accumulation")
        #expect(maxRelativeError(single.parameters, allreduce1.parameters) < (precision == "bf16" ? 5e-4 : 1e-5))
        #expect(maxRelativeError(single.losses, allreduce1.losses) < 1e-5)
    }

    static let moe = ["moe.experts=4", "moe.top_k=2", "moe.expert_hidden=12", "moe.aux_loss=0.05", "moe.z_loss=0.01", "moe.capacity_factor=1"]

    /// A mixture-of-experts model: each micro-batch routes over its own tokens (balance loss,
    /// z-loss, capacity), so 2, 3, 4 data ranks give one rank's losses, gradient norms,
    /// parameters and reported routing bit for bit. Teeth: under allreduce (routing over the
    /// pass's data ranks, one pass per rank), 4 ranks' parameters are not one rank's bits.
    @Test(arguments: ["fp32", "bf16"])
    func mixtureOfExpertsOnDataRanksGivesOneRanksBits(precision: String) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let extra = Self.ordered + Self.moe + ["train.precision=\(precision)"]
        let single = try Self.train(ranks: 1, extra: extra, data: data, run: directory.file("run1"))[0]
        #expect(single.losses.last! < single.losses.first! - 0.3, "the MoE model should learn: \(single.losses)")
        #expect(single.routing.allSatisfy { $0.count == 2 } && single.auxiliaryLosses.allSatisfy { ($0["moe_aux"] ?? 0) > 0 })
        #expect(single.routing.contains { $0.values.contains { $0.droppedFraction > 0 } }, "capacity should drop pairs: \(single.routing)")
        for ranks in [2, 3, 4] {
            let parallel = try Self.train(ranks: ranks, extra: extra, data: data, run: directory.file("run\(ranks)"))
            Self.expectOneRanksBits(parallel, single, "\(precision), \(ranks) ranks")
            for (rank, seen) in parallel.enumerated() {
                #expect(seen.auxiliaryLosses == single.auxiliaryLosses && seen.routing == single.routing,
                        "\(precision), \(ranks) ranks, rank \(rank): reported routing \(seen.routing.last!) vs \(single.routing.last!)")
            }
        }
        let plain = Self.moe + ["train.precision=\(precision)"]
        let allreduce1 = try Self.train(ranks: 1, extra: plain, data: data, run: directory.file("a1"))[0]
        let allreduce4 = try Self.train(ranks: 4, extra: plain, data: data, run: directory.file("a4"))[0]
        #expect(allreduce4.parameters != allreduce1.parameters, "allreduce should not give one rank's bits on 4 ranks (else this test shows nothing)")
        #expect(maxRelativeError(allreduce4.parameters, allreduce1.parameters) < (precision == "bf16" ? 5e-4 : 1e-5))
    }

    /// ZeRO under ordered: rank r owns the slice of the gradient it sums (whole chunks of the
    /// norm's sum), updates its piece and all-gathers; 2, 3, 4 ranks at stage 1, 2, 3 give the
    /// losses, gradient norms, parameters and checkpointed moments of one rank at stage 0 bit
    /// for bit. Teeth: allreduce at the same stage on 4 ranks does not give one rank's bits.
    @Test(arguments: [(1, "fp32", false), (2, "fp32", false), (3, "fp32", false), (1, "bf16", false), (2, "bf16", false), (3, "bf16", false),
                      (2, "bf16", true), (3, "fp32", true)])
    func zeroStagesGiveOneRanksBits(zero: Int, precision: String, moe: Bool) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let common = ["train.precision=\(precision)"] + (moe ? Self.moe : [])
        func train(_ ranks: Int, _ extra: [String], _ run: String) throws -> [RankRun] {
            let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file(run), steps: Self.steps) + common + extra)
            return try trainInProcess(config, ranks: ranks, steps: Self.steps, saveCheckpoint: true)
        }
        let label = "zero \(zero), \(precision)\(moe ? ", MoE" : "")"
        let single = try train(1, Self.ordered, "one")[0]
        let reference = try CheckpointStore.read(#require(single.checkpoint))
        for ranks in [2, 3, 4] {
            let parallel = try train(ranks, Self.ordered + ["parallel.zero=\(zero)"], "zero\(ranks)")
            Self.expectOneRanksBits(parallel, single, "\(label), \(ranks) ranks")
            for seen in parallel {
                #expect(seen.ownedFloats < single.parameters.count, "\(label), \(ranks) ranks: the optimizer state is sharded")
            }
            #expect(parallel.map(\.ownedFloats).reduce(0, +) == single.parameters.count, "\(label): every float owned once")
            let written = try CheckpointStore.read(#require(parallel[0].checkpoint))
            #expect(written.optimizer.names.sorted() == reference.optimizer.names.sorted())
            for name in reference.optimizer.names {
                #expect(written.optimizer[name]!.scalars == reference.optimizer[name]!.scalars, "\(label), \(ranks) ranks: moment \(name)")
            }
        }
        // Without overlap: at stage 3 a mixture of experts' routing gather (training thread) and the
        // next layer's parameter gather (communication thread) would share the world communicator.
        let allreduce1 = try train(1, ["train.micro_batch=1"], "a1")[0]
        let allreduce4 = try train(4, ["train.micro_batch=1", "parallel.zero=\(zero)", "parallel.overlap=false"], "a4")[0]
        #expect(allreduce4.parameters != allreduce1.parameters, "\(label): allreduce should not give one rank's bits (else this shows nothing)")
    }

    /// A run stopped at step 5 on 2 ranks and resumed on 3 (under another ZeRO stage too) gives
    /// the uninterrupted one-rank run's losses and parameters bit for bit.
    @Test(arguments: [(0, 0), (2, 3), (3, 0), (1, 2)])
    func aRunResumedOnAnotherRankCountKeepsOneRanksBits(fromZero: Int, toZero: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        func config(_ run: String, zero: Int) throws -> RunConfig {
            try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file(run), steps: Self.steps) + Self.ordered + ["parallel.zero=\(zero)"])
        }
        func run(_ config: RunConfig, ranks: Int, resume: Bool, stopAt: Int?) throws -> (losses: [Double], parameters: [Float]) {
            let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 60) { comm -> ([Double], [Float]) in
                let trainer = try Trainer(config: config, world: comm)
                let losses = try trainer.run(resume: resume, stopAt: stopAt).losses
                try trainer.gatherParameters()
                return (losses, trainer.model.parameters.values.array)
            }
            let all = try results.map { try $0.get() }
            for other in all.dropFirst() { #expect(other.0 == all[0].0 && other.1 == all[0].1, "ranks agree") }
            return all[0]
        }
        let whole = try run(config("straight", zero: 0), ranks: 1, resume: false, stopAt: nil)
        let first = try run(config("moved", zero: fromZero), ranks: 2, resume: false, stopAt: 5)
        let second = try run(config("moved", zero: toZero), ranks: 3, resume: true, stopAt: nil)
        #expect(first.losses.count == 5 && second.losses.count == Self.steps - 5)
        #expect(first.losses + second.losses == whole.losses, "zero \(fromZero) → \(toZero)")
        #expect(second.parameters == whole.parameters, "zero \(fromZero) → \(toZero): \(DataParallelExactnessTests.worst(second.parameters, whole.parameters))")
    }

    /// The validation loss too: each rank's passes of micro_batch sequences, added in global order.
    @Test func validationLossIsTheSameOnAnyDataRankCount() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        func validation(_ ranks: Int) throws -> [Double] {
            let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("v\(ranks)"), steps: 3) + Self.ordered)
            let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 60) { comm -> [Double] in
                let trainer = try Trainer(config: config, world: comm)
                var losses = [try trainer.validationLoss()]
                for _ in 0..<3 { try trainer.trainStep() }
                losses.append(try trainer.validationLoss(batches: 3))
                return losses
            }
            return try results.map { try $0.get() }.reduce(into: []) { all, rank in
                if all.isEmpty { all = rank } else { #expect(rank == all, "ranks agree") }
            }
        }
        let one = try validation(1)
        #expect(one.allSatisfy { $0 > 1 && $0.isFinite } && one[1] < one[0], "\(one)")
        for ranks in [2, 3, 4] { #expect(try validation(ranks) == one, "\(ranks) ranks") }
    }

    /// What ordered does not support, and micro-batches that do not deal out evenly: refused
    /// before any rank computes, with one line naming the keys.
    @Test(arguments: [
        (4, ["train.micro_batch=2"], ["train.global_batch", "train.micro_batch", "parallel.data", "choose"]),
        (5, ["train.micro_batch=1"], ["train.global_batch = 12", "parallel.data = 5"]),
        (2, ["train.micro_batch=0"], ["train.micro_batch > 0"]),
        (2, ["train.micro_batch=1", "parallel.sequence=2"], ["parallel.sequence=1"]),
        (4, ["train.micro_batch=1", "moe.experts=2", "moe.expert_hidden=8", "parallel.expert=2"], ["parallel.expert=1"]),
    ])
    func unsupportedSetupsAreRefused(ranks: Int, extra: [String], mentions: [String]) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run")) + ["parallel.reduction=ordered"] + extra)
        let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 30) { comm -> Bool in
            _ = try Trainer(config: config, world: comm)
            return true
        }
        for result in results {
            guard case .failure(let error) = result else { Issue.record("\(extra) on \(ranks) ranks should be refused"); continue }
            let text = "\(error)"
            guard case .orderedReductionUnsupported = error as? TrainingError else { Issue.record("not the ordered refusal: \(text)"); continue }
            #expect(text.contains("parallel.reduction = ordered") && !text.contains("\n"), "\(text)")
            for word in mentions { #expect(text.contains(word), "\(text) should mention \(word)") }
        }
        // The same setups under allreduce start (those that are valid there).
        if extra.contains("train.micro_batch=0") {
            let plain = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("plain")) + extra)
            let started = InProcessCommunicator.run(size: ranks, timeoutSeconds: 30) { comm -> Bool in
                _ = try Trainer(config: plain, world: comm)
                return true
            }
            for result in started { #expect((try? result.get()) == true, "\(extra) under allreduce") }
        }
    }

    @Test func reductionIsValidatedAndHashedOnlyWhenOrdered() throws {
        do {
            _ = try RunConfig(file: nil, overrides: ["parallel.reduction=ring"])
            Issue.record("parallel.reduction=ring should be refused")
        } catch {
            let text = "\(error)"
            #expect(text.contains("parallel.reduction") && text.contains("allreduce, ordered") && !text.contains("\n"), "\(text)")
        }
        let base = try RunConfig(file: nil, overrides: [])
        let explicit = try RunConfig(file: nil, overrides: ["parallel.reduction=allreduce"])
        let ordered = try RunConfig(file: nil, overrides: ["parallel.reduction=ordered"])
        #expect(explicit.numericHash == base.numericHash, "allreduce keeps the hash configs had before the key existed")
        #expect(ordered.numericHash != base.numericHash, "ordered sums in another order: its checkpoints must not resume under allreduce")
        #expect(ordered.numericDifferences(from: base) == ["parallel.reduction: allreduce → ordered"])
    }
}
