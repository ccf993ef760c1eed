import Testing
import Collectives
import Models
@testable import Training
import TrainingConfig
import _TestSupport

/// `parallel.zero` 1, 2 and 3: AdamW moments (from 2 the summed gradients, at 3 the parameters
/// between uses) kept only for each rank's owned pieces give one rank's numbers step by step, and
/// every rank ends each step with bitwise the same parameters (each piece is updated once, by its
/// owner, then gathered).
@Suite struct ZeroExactnessTests {
    static let steps = 12

    struct Layout: CustomStringConvertible, Sendable {
        var data = 1, sequence = 1, expert = 1
        /// A mixture-of-experts model (always under an expert axis).
        var moe = false
        var ranks: Int { data * sequence }
        var description: String { "\(data)d×\(sequence)s×\(expert)e" + (moe && expert == 1 ? " moe" : "") }
    }

    /// The tiny model, with the sequence-parallel tests' length and heads under a sequence axis
    /// and the expert tests' mixture of experts under an expert axis (or on data ranks alone).
    static func overrides(_ layout: Layout, data: String, run: String) -> [String] {
        var out = tinyOverrides(data: data, run: run, steps: steps)
        if layout.sequence > 1 { out += ["data.seq_len=24", "model.kv_heads=2"] }
        if layout.expert > 1 || layout.moe {
            out += ["moe.experts=4", "moe.top_k=2", "moe.expert_hidden=12", "moe.aux_loss=0.05", "moe.z_loss=0.01", "parallel.expert=\(layout.expert)"]
        }
        return out
    }

    /// `model`: the layout whose model settings to use (default: `layout`'s); one rank is
    /// compared with a layout on the same model.
    static func train(_ layout: Layout, model: Layout? = nil, zero: Int, data: String, run: String) throws -> [RankRun] {
        let config = try RunConfig(file: nil, overrides: overrides(model ?? layout, data: data, run: run)
            + ["parallel.zero=\(zero)", "parallel.data=\(layout.data)", "parallel.sequence=\(layout.sequence)", "parallel.expert=\(layout.expert)"])
        return try trainInProcess(config, ranks: layout.ranks, steps: steps)
    }

    /// Whether a rank's state bytes are what it holds by design: parameters (whole below stage 3,
    /// at 3 its pieces and at most the rest of the units gathered at once), gradients (whole
    /// below stage 2, its pieces from 2) and two moments (its pieces).
    static func stateBytesAreByDesign(_ run: RankRun, zero: Int) -> Bool {
        let floats = run.stateBytes / 4, all = run.parameters.count, mine = run.ownedFloats
        switch zero {
        case 1: return floats == 2 * all + 2 * mine
        case 2: return floats == all + 3 * mine
        default: return floats > 4 * mine && floats < 4 * mine + all
        }
    }

    static let layouts: [(Layout, Int)] = [2, 3, 4].flatMap { n in [1, 2, 3].map { (Layout(data: n), $0) } }
        + [1, 2, 3].map { (Layout(data: 2, sequence: 2), $0) } + [1, 2, 3].map { (Layout(data: 2, expert: 2), $0) }
        + [(Layout(data: 3, moe: true), 3)]

    @Test(arguments: layouts)
    func shardedStateMatchesOneRank(layout: Layout, zero: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let single = try Self.train(Layout(), model: layout, zero: 0, data: data, run: directory.file("one"))[0]
        let sharded = try Self.train(layout, zero: zero, data: data, run: directory.file("sharded"))
        #expect(single.losses.last! < single.losses.first! - 0.3, "the tiny model should learn: \(single.losses)")
        #expect(single.stateBytes == 16 * single.parameters.count)
        for (rank, run) in sharded.enumerated() {
            #expect(run.losses == sharded[0].losses && run.gradientNorms == sharded[0].gradientNorms, "\(layout) rank \(rank)")
            for (name, values) in run.namedParameters {
                // A tensor two ranks both hold (replicated, or one expert's replicas): bitwise equal.
                if let other = sharded[0].namedParameters[name] {
                    #expect(values == other, "\(layout) zero \(zero): rank \(rank)'s \(name) differs from rank 0's")
                }
                // Every tensor (expert shards by their global names): one rank's within tolerance.
                let reference = single.namedParameters[name] ?? []
                #expect(reference.count == values.count && maxRelativeError(values, reference) < 1e-5,
                        "\(layout) zero \(zero) rank \(rank) \(name): \(DataParallelExactnessTests.worst(values, reference))")
            }
            #expect(maxRelativeError(run.losses, single.losses) < 1e-5, "\(layout) zero \(zero) losses \(run.losses) vs \(single.losses)")
            #expect(maxRelativeError(run.gradientNorms, single.gradientNorms) < 1e-5,
                    "\(layout) zero \(zero) norms \(run.gradientNorms) vs \(single.gradientNorms)")
            // The moments are this rank's pieces only: about 1/ranks of the replicated tensors
            // (an expert shard with one holder is its holder's alone).
            let moments = run.ownedFloats, total = run.parameters.count
            #expect(layout.expert > 1 ? moments < total : moments <= total / layout.ranks + 64, "\(layout) rank \(rank) holds \(moments) of \(total) moments")
            #expect(Self.stateBytesAreByDesign(run, zero: zero), "\(layout) zero \(zero) rank \(rank): \(run.stateBytes) bytes for \(moments) of \(total)")
        }
        // At stage 3 the pages of other ranks' pieces were given back after the last step (they
        // read 0). In the tiny model only the embedding and head span pages: rank 0's other
        // pieces of the embedding (≥ 8 KiB in a row on 2–4 ranks) hold a whole page wherever
        // the buffer starts; the middle ranks' may not.
        #expect(zero < 3 || sharded[0].droppedValues >= Int(ZeroPartition.pageBytes / 4), "\(layout): rank 0 gave no page of parameters back")
        if layout.expert == 1 {   // every float owned exactly once
            #expect(sharded.map(\.ownedFloats).reduce(0, +) == sharded[0].parameters.count, "the pieces cover the parameters once")
        }
    }

    /// A mixture-of-experts layer on several ranks gathers its routing statistics on the
    /// training thread during the forward pass, while stage 3 gathers the next unit's parameters
    /// on the communication thread: two collectives at once over the same ranks (it failed with
    /// "allGather: rank 0 sent 0 B, counts say 112", one layer's statistics). Such a run does
    /// not overlap (the same numbers, `shardedStateMatchesOneRank`'s "3d×1s×1e moe"); a dense
    /// model at stage 3 and a MoE model at stage 2 (nothing gathered during its forward) still do.
    @Test func stageThreeDoesNotOverlapAForwardThatCommunicates() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        func overlaps(_ layout: Layout, zero: Int, _ extra: [String] = []) throws -> [Bool] {
            let config = try RunConfig(file: nil, overrides: Self.overrides(layout, data: data, run: directory.file("run"))
                + ["parallel.zero=\(zero)", "parallel.data=\(layout.data)"] + extra)
            return try InProcessCommunicator.run(size: layout.ranks, timeoutSeconds: 60) { comm in
                try Trainer(config: config, world: comm).reducer.overlap
            }.map { try $0.get() }
        }
        #expect(try overlaps(Layout(data: 2, moe: true), zero: 3) == [false, false])
        #expect(try overlaps(Layout(data: 2), zero: 3) == [true, true])
        #expect(try overlaps(Layout(data: 2, moe: true), zero: 2) == [true, true])
    }

    @Test func anUnknownStageIsRefusedInOneLine() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: try makeCorpus(in: directory), run: directory.file("run")) + ["parallel.zero=4"])
        var text = "(no error)"
        do { _ = try Trainer(config: config, world: SingleProcessCommunicator()) } catch { text = "\(error)" }
        #expect(text == "--set: parallel.zero = 4 is not a ZeRO stage; set parallel.zero to 0, 1, 2 or 3")
    }

    /// A rank that never reaches the gather of the updated parameters (at stage 3: of the next
    /// step's first layer): the others throw an error naming it within the collective deadline
    /// instead of waiting for ever.
    @Test(arguments: [1, 2, 3])
    func aLostRankDuringTheParameterGatherIsNamed(zero: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: try makeCorpus(in: directory), run: directory.file("run"))
            + ["parallel.zero=\(zero)"])
        let results = InProcessCommunicator.run(size: 3, timeoutSeconds: 2) { comm -> Void in
            let trainer = try Trainer(config: config, world: comm)
            try trainer.trainStep()
            guard comm.rank != 2 else { return }   // rank 2 is gone before the next step's gather
            if zero == 3 { try trainer.trainStep(); return }
            trainer.optimizer.step(learningRate: 1e-3, threads: trainer.model.threads)
            try trainer.partition!.allGatherParameters()
        }
        for rank in 0..<2 {
            guard case .failure(let error) = results[rank] else { Issue.record("rank \(rank) gathered without rank 2"); continue }
            #expect(error is CollectiveError && "\(error)".contains("rank 2"), "rank \(rank): \(error)")
        }
    }
}
