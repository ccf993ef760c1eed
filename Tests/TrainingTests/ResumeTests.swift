import Testing
import Collectives
import Foundation
import Training
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

    @Test func aRunDirectoryWithCheckpointsIsNotOverwritten() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 2))
        _ = try Trainer(config: config, world: SingleProcessCommunicator()).run(resume: false)
        let error = #expect(throws: ConfigError.self) { try Trainer(config: config, world: SingleProcessCommunicator()).run(resume: false) }
        #expect(error?.description.contains("--resume") == true)
    }

    @Test func resumingWithAChangedModelIsRefusedNamingTheKey() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: directory.file("run"), steps: 2))
        _ = try Trainer(config: config, world: SingleProcessCommunicator()).run(resume: false)
        let changed = try config.applying(["train.lr=1e-2"])
        let error = #expect(throws: ConfigError.self) { try Trainer(config: changed, world: SingleProcessCommunicator()).run(resume: true) }
        #expect(error?.description.contains("train.lr") == true)
    }
}
