import Testing
import Checkpointing
import Collectives
import Foundation
import Training
import TrainingConfig
import _TestSupport

@Suite struct ResumeTests {
    /// Stopping at step k and resuming from the checkpoint gives bitwise the same losses as an
    /// uninterrupted run, on one rank and on two.
    @Test(arguments: [1, 2])
    func resumedRunMatchesUninterruptedRun(ranks: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let straight = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("straight"), steps: 12))
        let interrupted = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("interrupted"), steps: 12))
        let results = InProcessCommunicator.run(size: ranks) { comm -> ([Double], [Double], [Double]) in
            let reference = try Trainer(config: straight, world: comm).run(resume: false).losses
            let first = try Trainer(config: interrupted, world: comm).run(resume: false, stopAt: 5).losses
            let second = try Trainer(config: interrupted, world: comm).run(resume: true).losses
            return (reference, first, second)
        }
        for result in results {
            let (reference, first, second) = try result.get()
            #expect(first.count == 5 && second.count == 7)
            #expect(first + second == reference)
        }
    }

    /// A stop request seen by one rank only stops every rank at the same step, with a
    /// checkpoint from which the run resumes exactly.
    @Test func aStopRequestOnOneRankStopsAllAtTheSameStep() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 10) + ["train.log_every=2"])
        let reference = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("reference"), steps: 10))
        let results = InProcessCommunicator.run(size: 3) { comm -> (Int, [Double], [Double]) in
            let trainer = try Trainer(config: config, world: comm)
            var polls = 0
            trainer.stopRequested = { polls += 1; return comm.rank == 1 && polls == 4 }
            var stoppedAt = -1
            do { _ = try trainer.run(resume: false) } catch let stop as TrainingInterrupted { stoppedAt = stop.step }
            let resumed = try Trainer(config: config, world: comm).run(resume: true).losses
            let full = try Trainer(config: reference, world: comm).run(resume: false).losses
            return (stoppedAt, resumed, full)
        }
        for result in results {
            let (stoppedAt, resumed, full) = try result.get()
            #expect(stoppedAt == 4)
            #expect(resumed == Array(full.dropFirst(4)))
        }
        // The step it stopped on (a logging step) is in the metrics once, like every other.
        let metrics = try String(contentsOfFile: directory.file("run/metrics.jsonl"), encoding: .utf8)
        let records = metrics.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let logged = records.filter { $0["loss"] != nil }.compactMap { $0["step"] as? Int }
        #expect(logged == [2, 4, 6, 8, 10])
    }

    /// A run killed after its last checkpoint logged steps past it (the last line cut short):
    /// the resumed run drops those records and logs them again, so every step is in the
    /// metrics once, with the uninterrupted run's values.
    @Test func aResumedRunDropsTheRecordsLoggedAfterItsCheckpoint() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 8) + ["train.log_every=1"])
        let straight = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("reference"), steps: 8) + ["train.log_every=1"])
        _ = try Trainer(config: straight, world: SingleProcessCommunicator()).run(resume: false)
        _ = try Trainer(config: config, world: SingleProcessCommunicator()).run(resume: false, stopAt: 3)
        let died = Data(#"{"loss":9,"step":4}\#n{"loss":9,"step":5}\#n{"loss":9,"st"#.utf8)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: directory.file("run/metrics.jsonl")))
        handle.seekToEndOfFile()
        handle.write(died)
        try handle.close()
        _ = try Trainer(config: config, world: SingleProcessCommunicator()).run(resume: true)
        func training(_ run: String) throws -> [[String: Any]] {
            try String(contentsOfFile: directory.file("\(run)/metrics.jsonl"), encoding: .utf8).split(separator: "\n").map {
                try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any], "not a JSON line: \($0)")
            }.filter { $0["loss"] != nil }
        }
        let resumed = try training("run"), reference = try training("reference")
        #expect(resumed.compactMap { $0["step"] as? Int } == Array(1...8))
        #expect(resumed.compactMap { $0["loss"] as? Double } == reference.compactMap { $0["loss"] as? Double })
    }

    /// Checkpoints written before the hash had a version record the version-1 form: they resume;
    /// a version-1 hash of other numbers is still refused.
    @Test func aCheckpointWithTheVersion1HashResumes() throws {
        let (directory, config) = try Self.finishedRun(steps: 2)
        defer { directory.remove() }
        #expect(config.numericHash.hasPrefix("v2:") && !config.numericHashVersion1.contains(":"))
        let checkpoint = URL(fileURLWithPath: config.run.dir).appendingPathComponent("checkpoints/" + CheckpointLayout.directoryName(step: 2))
        func record(_ hash: String) throws {
            let state = checkpoint.appendingPathComponent("trainer_state.json"), sums = checkpoint.appendingPathComponent("checksums.json")
            var fields = try #require(JSONSerialization.jsonObject(with: Data(contentsOf: state)) as? [String: Any])
            fields["configHash"] = hash
            let written = try JSONSerialization.data(withJSONObject: fields)
            try written.write(to: state)
            var manifest = try #require(JSONSerialization.jsonObject(with: Data(contentsOf: sums)) as? [String: Any])
            var files = try #require(manifest["files"] as? [String: String])
            files["trainer_state.json"] = CheckpointCommit.sha256(written)
            manifest["files"] = files
            try JSONSerialization.data(withJSONObject: manifest).write(to: sums)
        }
        try record(try config.applying(["train.lr=1e-2"]).numericHashVersion1)
        let longer = try config.applying(["train.steps=3"])
        let error = #expect(throws: TrainingError.self) { try Trainer(config: longer, world: SingleProcessCommunicator()).run(resume: true) }
        guard case .configChanged? = error else { Issue.record("\(String(describing: error))"); return }
        try record(config.numericHashVersion1)
        #expect(try Trainer(config: longer, world: SingleProcessCommunicator()).run(resume: true).losses.count == 1)
    }

    /// A run of `steps` steps trained to its end in a fresh directory (remove it when done).
    static func finishedRun(steps: Int) throws -> (TemporaryDirectory, RunConfig) {
        let directory = TemporaryDirectory()
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: steps))
        _ = try Trainer(config: config, world: SingleProcessCommunicator()).run(resume: false)
        return (directory, config)
    }

    @Test func aRunDirectoryWithCheckpointsIsNotOverwritten() throws {
        let (directory, config) = try Self.finishedRun(steps: 2)
        defer { directory.remove() }
        let error = #expect(throws: TrainingError.self) { try Trainer(config: config, world: SingleProcessCommunicator()).run(resume: false) }
        guard case .runDirectoryInUse? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(error?.description.contains("--resume") == true)
    }

    @Test func resumingWithAChangedModelIsRefusedNamingTheKey() throws {
        let (directory, config) = try Self.finishedRun(steps: 2)
        defer { directory.remove() }
        let changed = try config.applying(["train.lr=1e-2"])
        let error = #expect(throws: TrainingError.self) { try Trainer(config: changed, world: SingleProcessCommunicator()).run(resume: true) }
        guard case .configChanged(_, let changes)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(changes == ["train.lr: 0.003 → 0.01"])
    }

    @Test func resumingARunAlreadyAtItsLastStepIsRefusedNamingBothSteps() throws {
        let (directory, config) = try Self.finishedRun(steps: 4)
        defer { directory.remove() }
        let shorter = try config.applying(["train.steps=3"])
        let error = #expect(throws: TrainingError.self) { try Trainer(config: shorter, world: SingleProcessCommunicator()).run(resume: true) }
        guard case .resumePastEnd(_, let step, let steps)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(step == 4 && steps == 3)
        #expect(error!.description.contains("step 4") && error!.description.contains("train.steps = 3"))
    }

    @Test func everyRankFailsWithRankZerosMessageWhenResumingIsRefused() throws {
        let (directory, config) = try Self.finishedRun(steps: 2)
        defer { directory.remove() }
        let changed = try config.applying(["train.lr=1e-2"])
        let results = InProcessCommunicator.run(size: 2) { comm in try Trainer(config: changed, world: comm).run(resume: true) }
        let messages = results.map { result -> String in
            if case .failure(let error) = result { return "\(error)" }
            return "no error"
        }
        #expect(messages[0].contains("train.lr: 0.003 → 0.01"))
        #expect(messages[1] == messages[0], "rank 1 reports rank 0's reason")
    }
}
