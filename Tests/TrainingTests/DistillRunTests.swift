import _TestSupport
import Checkpointing
import Collectives
import Distillation
import Foundation
import Models
import Testing
import Training
import TrainingConfig

/// A teacher trained a few steps on the test corpus and saved: its checkpoint and contents.
private func makeTeacher(_ directory: TemporaryDirectory, data: String, extra: [String] = []) throws -> (url: URL, contents: CheckpointContents, config: RunConfig) {
    let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("teacher"), steps: 8, batch: 4) + extra)
    let trainer = try Trainer(config: config, world: SingleProcessCommunicator())
    for _ in 0..<8 { try trainer.trainStep() }
    let url = try #require(try trainer.saveCheckpoint())
    let contents = try CheckpointStore.read(url)
    return (url, contents, try RunConfig(resolvedYAML: contents.runConfig, source: url.path))
}

/// A distill config file: every stage 3 steps, every step logged.
private func distillFile(_ directory: TemporaryDirectory, extra: String = "") throws -> String {
    let path = directory.file("distill-\(UUID().uuidString).yaml")
    try """
        distill:
          chunk_size: 4
          stage1_steps: 3
          stage2_steps: 3
          stage3_steps: 3
          data_loss_weight: 0.5
        train:
          global_batch: 4
          log_every: 1
        eval:
          batches: 1
        checkpoint:
          keep: 5
        \(extra)
        """.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// The loss and validation records of a distillation's metrics.jsonl, by (kind, stage, step).
private func records(_ runDirectory: String) throws -> [String: [String: Double]] {
    let text = try String(contentsOfFile: runDirectory + "/metrics.jsonl", encoding: .utf8)
    var out: [String: [String: Double]] = [:]
    for line in text.split(separator: "\n") {
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        guard let stage = object["stage"] as? Int, let step = object["step"] as? Int else { continue }
        var values: [String: Double] = [:]
        if let v = object["val_loss"] as? Double { values["val_loss"] = v }
        if let layers = object["layer_losses"] as? [String: Double] { for (k, v) in layers { values["layer " + k] = v } }
        for k in ["kd", "data", "total"] { if let v = object[k] as? Double { values[k] = v } }
        let key = "\(values["val_loss"] == nil ? "loss" : "val") \(stage) \(step)"
        #expect(out[key] == nil, "\(key) logged twice")
        out[key] = values
    }
    return out
}

@Suite struct DistillRunTests {
    @Test func theModelComesFromTheTeacherAndTheRestFromTheDistillConfig() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        var teacher = try RunConfig(file: nil, overrides: ["model.d_model=48", "model.layers=3", "model.heads=3", "model.kv_heads=1",
                                                           "checkpoint.service=node0:29700", "run.dir=/runs/teacher", "data.seq_len=32"])
        teacher.source = "teacher/run.yaml"
        let config = try DistillRunConfig.compose(teacher: teacher, file: try distillFile(directory, extra: "run:\n  dir: /runs/student"),
                                                  overrides: ["distill.keep_attention=1"])
        #expect(config.model == teacher.model)
        #expect(config.data.seqLen == 32)                   // left out of the distill config: the teacher's
        #expect(config.train.globalBatch == 4)
        #expect(config.checkpoint.service == "")            // never the teacher's service or run directory by default
        #expect(config.run.dir == "/runs/student")
        #expect(config.distill.stage2Steps == 3 && config.distill.keepAttention == "1")
    }

    @Test func theTeachersKeysAndEmptyRunsAreRefusedByName() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let teacher = RunConfig()
        let file = try distillFile(directory, extra: "model:\n  d_model: 64")
        #expect(throws: DistillRunError.teacherKeyInConfig(key: "model.d_model", origin: file + ":15")) {
            try DistillRunConfig.compose(teacher: teacher, file: file, overrides: [])
        }
        #expect(throws: DistillRunError.teacherKeyInConfig(key: "moe.experts", origin: "--set moe.experts=4")) {
            try DistillRunConfig.compose(teacher: teacher, file: try distillFile(directory), overrides: ["moe.experts=4"])
        }
        #expect(throws: DistillRunError.nothingToDistill(source: "--set")) {
            try DistillRunConfig.compose(teacher: teacher, file: nil, overrides: ["distill.stage1_steps=0", "distill.stage2_steps=0", "distill.stage3_steps=0"])
        }
        #expect(throws: ConfigError.self) { try DistillRunConfig.compose(teacher: teacher, file: nil, overrides: ["distill.stage9_steps=1"]) }
        #expect(throws: DistillRunError.trainOnlyKey(key: "parallel.zero", value: 1, origin: "--set")) {
            try DistillRunConfig.compose(teacher: teacher, file: nil, overrides: ["parallel.zero=1"])
        }
        #expect(throws: DistillRunError.trainOnlyKey(key: "train.micro_batch", value: 2, origin: "--set")) {
            try DistillRunConfig.compose(teacher: teacher, file: nil, overrides: ["train.micro_batch=2"])
        }
        #expect(throws: DistillRunError.orderedReduction(origin: "--set")) {
            try DistillRunConfig.compose(teacher: teacher, file: nil, overrides: ["parallel.reduction=ordered"])
        }
    }

    /// Every stage on 1 and 2 in-process ranks: 2 ranks log the losses of 1 (within 1e-5); a run
    /// stopped in the middle of stage 2 and resumed from its checkpoint logs exactly the
    /// records of the uninterrupted run (metrics.jsonl without duplicates).
    @Test func twoRanksEqualOneAndAResumedRunEqualsAnUninterruptedOne() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let teacher = try makeTeacher(directory, data: data)
        let file = try distillFile(directory)
        func config(_ run: String) throws -> RunConfig {
            try DistillRunConfig.compose(teacher: teacher.config, file: file, overrides: ["run.dir=\(directory.file(run))"])
        }
        for ranks in [1, 2] {
            let straight = try config("straight\(ranks)"), stopped = try config("stopped\(ranks)")
            let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 120) { comm -> Int in
                _ = try DistillRun(config: straight, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: comm).run(resume: false)
                do {
                    _ = try DistillRun(config: stopped, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: comm).run(resume: false, stopAt: 5)
                    Issue.record("the run did not stop at step 5")
                } catch let stop as TrainingInterrupted {
                    #expect(stop.step == 5 && stop.command == "distill")
                }
                let resumed = try DistillRun(config: stopped, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: comm)
                let summaries = try resumed.run(resume: true)
                #expect(summaries.map(\.stage) == [2, 3] && summaries.map(\.steps) == [1, 3])
                return resumed.step
            }
            for result in results { #expect(try result.get() == 9) }
            let reference = try records(directory.file("straight\(ranks)"))
            #expect(reference.count == 12)   // 9 steps and 3 stage validations
            #expect(try records(directory.file("stopped\(ranks)")) == reference)
        }
        let one = try records(directory.file("straight1")), two = try records(directory.file("straight2"))
        #expect(Set(one.keys) == Set(two.keys))
        for (key, values) in one {
            for (name, value) in values {
                let other = try #require(two[key]?[name])
                #expect(abs(value - other) <= 1e-5 * max(1, abs(value)), "\(key) \(name): \(value) vs \(other)")
            }
        }
    }

    /// `tessera distill`'s run on a sequence layout (2 ranks, ring attention, the Mamba-2
    /// layers gathering the sequence) and an expert layout (an MoE teacher, data 2 × expert 2):
    /// every logged loss and validation within 1e-5 of one rank's, the final student checkpoint
    /// too, and a run stopped in the middle of stage 2 and resumed from its checkpoint (the
    /// experts handed out again) logs the uninterrupted run's records and writes its student
    /// bit for bit.
    @Test(arguments: [(["parallel.sequence=2"], false), (["parallel.expert=2"], true)])
    func sequenceAndExpertLayoutsEqualOneRankAndResumeExactly(layout: [String], moe: Bool) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let experts = ["moe.experts=4", "moe.top_k=2", "moe.expert_hidden=12", "moe.aux_loss=0.05", "moe.z_loss=0.01"]
        let teacher = try makeTeacher(directory, data: data, extra: moe ? experts : [])
        let file = try distillFile(directory)
        func config(_ run: String, _ extra: [String]) throws -> RunConfig {
            try DistillRunConfig.compose(teacher: teacher.config, file: file, overrides: extra + ["run.dir=\(directory.file(run))"])
        }
        let one = try config("one", []), straight = try config("straight", layout), stopped = try config("stopped", layout)
        _ = try DistillRun(config: one, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: SingleProcessCommunicator()).run(resume: false)
        let results = InProcessCommunicator.run(size: 2, timeoutSeconds: 120) { comm -> Int in
            _ = try DistillRun(config: straight, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: comm).run(resume: false)
            do {
                _ = try DistillRun(config: stopped, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: comm).run(resume: false, stopAt: 5)
                Issue.record("the run did not stop at step 5")
            } catch is TrainingInterrupted {}
            let resumed = try DistillRun(config: stopped, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: comm)
            _ = try resumed.run(resume: true)
            return resumed.step
        }
        for result in results { #expect(try result.get() == 9) }
        let reference = try records(directory.file("one")), parallel = try records(directory.file("straight"))
        #expect(reference.count == 12 && Set(reference.keys) == Set(parallel.keys))
        #expect(try records(directory.file("stopped")) == parallel, "\(layout): the resumed run's records")
        for (key, values) in reference {
            for (name, value) in values {
                let other = try #require(parallel[key]?[name])
                #expect(abs(value - other) <= 1e-5 * max(1, abs(value)), "\(layout) \(key) \(name): \(value) vs one rank's \(other)")
            }
        }
        func student(_ run: String) throws -> CheckpointContents {
            try CheckpointStore.read(try #require(CheckpointStore(root: URL(fileURLWithPath: directory.file(run + "/checkpoints"))).latest()))
        }
        let (single, many, again) = (try student("one"), try student("straight"), try student("stopped"))
        #expect(many.model.names.sorted() == single.model.names.sorted() && many.state.step == 9)
        for name in single.model.names {
            #expect(maxRelativeError(many.model[name]!.scalars, single.model[name]!.scalars) < 1e-5, "\(layout): \(name)")
            #expect(again.model[name]!.scalars.map(\.bitPattern) == many.model[name]!.scalars.map(\.bitPattern), "\(layout): resumed \(name)")
        }
    }

    /// Sequence and expert layouts run (DistillLayoutTests, and the layouts below); what
    /// cannot run is refused before anything computes, in one line naming the key.
    @Test func layoutsThatCannotRunAreRefusedByKey() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let teacher = try makeTeacher(directory, data: data)
        let file = try distillFile(directory)
        let cases: [([String], Int, String)] = [
            (["parallel.sequence=2"], 1, "parallel.sequence"),                         // 2 sequence ranks on 1
            (["parallel.sequence=3"], 3, "data.seq_len"),                              // 16 tokens do not split into 6 chunks
            (["parallel.sequence=2", "parallel.sequence_mode=ulysses"], 2, "model.kv_heads"),   // 1 kv head over 2 ranks
            (["parallel.expert=2"], 2, "parallel.expert")]                             // a dense teacher has no experts
        for (overrides, ranks, key) in cases {
            let config = try DistillRunConfig.compose(teacher: teacher.config, file: file, overrides: overrides + ["run.dir=\(directory.file("run"))"])
            let results = InProcessCommunicator.run(size: ranks) { comm -> String in
                do {
                    _ = try DistillRun(config: config, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: comm)
                    return "accepted"
                } catch let error as TrainingError {
                    return error.description
                }
            }
            for result in results {
                let message = try result.get()
                #expect(message.contains(key) && !message.contains("\n"), "\(overrides): \(message)")
            }
        }
        #expect(!FileManager.default.fileExists(atPath: directory.file("run")), "nothing written")
    }

    /// Each stage ends with a normal checkpoint: readable by CheckpointStore, its run.yaml the
    /// student's (a Mamba-2 model the normal loaders build), weights the student's.
    @Test func eachStageSavesTheStudentAsANormalCheckpoint() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let teacher = try makeTeacher(directory, data: data)
        let config = try DistillRunConfig.compose(teacher: teacher.config, file: try distillFile(directory),
                                                  overrides: ["run.dir=\(directory.file("run"))", "distill.stage2_steps=0"])
        let run = try DistillRun(config: config, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: SingleProcessCommunicator())
        _ = try run.run(resume: false)
        let store = CheckpointStore(root: URL(fileURLWithPath: directory.file("run/checkpoints")))
        #expect(store.complete().map(\.step) == [3, 6])   // stage 1 ends at 3; stage 2 skipped; stage 3 at 6
        let contents = try CheckpointStore.read(try #require(store.latest()))
        let saved = try RunConfig(resolvedYAML: contents.runConfig, source: "run.yaml")
        #expect(saved.model.sequenceMixer == "mamba2" && saved.model.ssmChunkSize == 4)
        #expect(contents.state.validationLoss.map { $0.isFinite && $0 > 0 } == true)   // the stage's, for checkpoint.keep_best
        let model = try TransformerLM(config: saved.modelConfig, seed: 0)
        try model.parameters.load(contents.model, source: "checkpoint")
        #expect(model.parameters.values.array == run.student.parameters.values.array)
        let progress = try JSONDecoder().decode(DistillProgress.self, from: try Data(contentsOf: try #require(store.latest()).appendingPathComponent(DistillProgress.fileName)))
        #expect(progress.stage == 3 && progress.stageStep == 3 && progress.step == 6 && progress.samplesSeen == 6 * 4)
        // The student once (the model files), the stage's moments as the optimizer file, integer counters in the progress.
        #expect(try FileManager.default.contentsOfDirectory(atPath: try #require(store.latest()).path).filter { $0.hasPrefix("distill_state") }.isEmpty)
        #expect(contents.optimizer.names.count == 2 * contents.model.names.count)
        #expect(contents.optimizer["model.norm.weight.exp_avg"]?.scalars.contains { $0 != 0 } == true, "stage 3 trains the final norm")
        // The run is finished: resuming it says so; starting it again is refused.
        #expect(throws: DistillRunError.self) {
            _ = try DistillRun(config: config, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: SingleProcessCommunicator()).run(resume: true)
        }
        #expect(throws: DistillRunError.self) {
            _ = try DistillRun(config: config, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: SingleProcessCommunicator()).run(resume: false)
        }
        // A changed distill key is named when resuming.
        var changed = config
        changed.distill.stage1Lr = 5e-3
        do {
            _ = try DistillRun(config: changed, teacherCheckpoint: teacher.url, teacher: teacher.contents, world: SingleProcessCommunicator()).run(resume: true)
            Issue.record("a changed distill.stage1_lr was accepted")
        } catch let error as DistillRunError {
            guard case .configChanged(_, let key, _, _) = error else { Issue.record("\(error)"); return }
            #expect(key == "distill.stage1_lr")
        }
    }
}
