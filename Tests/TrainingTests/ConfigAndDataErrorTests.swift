import Testing
import Collectives
import Foundation
import TokenData
import Training
import TrainingConfig
import _TestSupport

@Suite struct ConfigAndDataErrorTests {
    func message(_ body: () throws -> Void) -> String {
        do { try body() } catch { return "\(error)" }
        return "(no error)"
    }

    @Test func unknownKeySuggestsTheNearestOne() {
        let text = message { _ = try RunConfig(file: nil, overrides: ["train.global_bach=8"]) }
        #expect(text.contains("unknown key 'train.global_bach'") && text.contains("did you mean 'train.global_batch'"))
    }

    @Test func unknownKeyInAFileNamesTheFile() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        try "model:\n  d_modle: 64\n".write(toFile: directory.file("bad.yaml"), atomically: true, encoding: .utf8)
        let text = message { _ = try RunConfig(file: directory.file("bad.yaml")) }
        #expect(text.contains("bad.yaml") && text.contains("model.d_modle") && text.contains("model.d_model"))
    }

    @Test func malformedYAMLAndWrongTypesAreReported() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        try "model: [unclosed\n".write(toFile: directory.file("broken.yaml"), atomically: true, encoding: .utf8)
        #expect(message { _ = try RunConfig(file: directory.file("broken.yaml")) }.contains("not valid YAML"))
        #expect(message { _ = try RunConfig(file: nil, overrides: ["train.steps=many"]) }.contains("train.steps = 'many' is not an integer"))
        #expect(message { _ = try RunConfig(file: directory.file("absent.yaml")) }.contains("absent.yaml cannot be read"))
        #expect(message { _ = try RunConfig(file: nil, overrides: ["model.heads=3"]) }.contains("model.d_model = 256 is not divisible by model.heads = 3"))
    }

    @Test func aBatchThatDoesNotDivideNamesBothNumbers() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), batch: 10))
        let results = InProcessCommunicator.run(size: 3) { comm in _ = try Trainer(config: config, world: comm) }
        let text = message { try results[0].get() }
        #expect(text.contains("train.global_batch = 10") && text.contains("parallel.data = 3"))
    }

    @Test func dataProblemsSayWhatToChange() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        #expect(message { _ = try TokenDataset(directory: directory.file("nowhere"), split: "train") }.contains("does not exist"))
        // Truncated shard.
        let shard = data + "/val-00000.tok"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: shard))
        try bytes.prefix(bytes.count - 3).write(to: URL(fileURLWithPath: shard))
        #expect(message { _ = try TokenDataset(directory: data, split: "val") }.contains("truncated"))
        // Wrong magic.
        try Data("not a shard at all, just some text here".utf8).write(to: URL(fileURLWithPath: shard))
        #expect(message { _ = try TokenDataset(directory: data, split: "val") }.contains("wrong magic"))
        // Too short for one batch.
        let fresh = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: fresh, run: directory.file("run")) + ["data.seq_len=4096"])
        let text = message { _ = try Trainer(config: config, world: SingleProcessCommunicator()) }
        #expect(text.contains("needs at least") && text.contains("lower data.seq_len"))
    }

    @Test func samplerGivesDisjointSlicesAndCoversAnEpochOnce() {
        let sampler = Sampler(sampleCount: 30, seed: 9)
        var seen: [Int] = []
        for step in 0..<5 {
            let slices = (0..<3).map { sampler.indices(samplesSeen: step * 6, globalBatch: 6, rank: $0, ranks: 3) }
            #expect(Set(slices.flatMap { $0 }).count == 6)
            seen += slices.flatMap { $0 }
        }
        #expect(Set(seen) == Set(0..<30))
        #expect(Sampler(sampleCount: 30, seed: 9).indices(samplesSeen: 12, globalBatch: 6, rank: 1, ranks: 3)
                == sampler.indices(samplesSeen: 12, globalBatch: 6, rank: 1, ranks: 3))
    }

    @Test func scheduleWarmsUpThenDecaysToTheMinimum() {
        let s = LearningRateSchedule(peak: 1, minimum: 0.1, warmupSteps: 4, totalSteps: 14)
        #expect(s.rate(at: 0) == 0.25 && s.rate(at: 3) == 1)
        #expect(abs(s.rate(at: 9) - 0.55) < 1e-6)
        #expect(abs(s.rate(at: 14) - 0.1) < 1e-6)
    }
}
