@testable import CheckpointService
import Checkpointing
import Foundation
import Testing
import _TestSupport

/// Jobs of the checkpoint service run as child processes (`ServiceJobProcesses`): a child that
/// crashes, fails or overruns is reported to its client in one line, and the service serves on.
/// The children here are shell scripts standing in for `tessera ckpt job`: they get the same
/// `--request FILE --result FILE` arguments ($1..$4) and answer the same way.
@Suite struct ServiceJobProcessTests {
    static let request = ServiceJobRequest(method: "uniform", inputs: ["8"], output: "s")

    /// A child that writes a result for the job: the checkpoint `ROOT/soups/s`, two log lines.
    static let succeeding = #"printf '{"result":{"checkpoint":"soups/s","log":["one","two"]}}' > "$4""#

    func fixture(_ script: String, timeout: Double = 30) throws -> ServiceFixture {
        let fixture = try ServiceFixture()
        fixture.server.jobs = ServiceJobProcesses(command: ["/bin/sh", "-c", script, "job"], timeoutSeconds: timeout)
        return fixture
    }

    @Test func aJobKilledBySIGKILLIsReportedWithItsSignalAndTheServiceServesTheNextRequest() throws {
        let fixture = try fixture(#"echo "started $2"; kill -9 $$"#)
        do { _ = try fixture.sink().submit(Self.request, replyTimeout: 10); Issue.record("a killed job succeeded") } catch {
            let text = "\(error)"
            #expect(text.contains("the soup job (process ") && text.contains(" was killed by signal 9 ("), "\(text)")
            #expect(text.contains("its output: \(fixture.root.path)/jobs/job-") && !text.contains("\n"), "\(text)")
            let log = text.components(separatedBy: "its output: ")[1].components(separatedBy: ";")[0]
            #expect(try String(contentsOfFile: log, encoding: .utf8).hasPrefix("started \(fixture.root.path)/jobs/job-"), "the child's output is kept")
        }
        #expect(try fixture.sink().list() == [])   // the service is still there
        fixture.server.jobs = ServiceJobProcesses(command: ["/bin/sh", "-c", Self.succeeding, "job"], timeoutSeconds: 30)
        let result = try fixture.sink().submit(Self.request, replyTimeout: 10)
        #expect(result == ServiceJobResult(checkpoint: "soups/s", log: ["one", "two"]))
        #expect(fixture.log.contains("job done: soups/s"))
        let left = try FileManager.default.contentsOfDirectory(atPath: fixture.root.appendingPathComponent("jobs").path)
        #expect(left.allSatisfy { $0.hasSuffix(".log") } && left.count == 2, "request and result files are removed, logs kept: \(left)")
    }

    @Test func aJobThatFailsAnswersWithItsOwnErrorAndOneThatExitsWithoutAnswerWithItsStatus() throws {
        let failing = try fixture(#"printf '{"error":"the job input /etc is not under the service'"'"'s root"}' > "$4"; exit 1"#)
        do { _ = try failing.sink().submit(Self.request, replyTimeout: 10); Issue.record("a failed job succeeded") } catch {
            #expect("\(error)" == "checkpoint service at 127.0.0.1:\(failing.server.port) refused the request: the job input /etc is not under the service's root")
        }
        let silent = try fixture("exit 3")
        do { _ = try silent.sink().submit(Self.request, replyTimeout: 10); Issue.record("a job without an answer succeeded") } catch {
            #expect("\(error)".contains("exited with status 3 without a result"), "\(error)")
        }
    }

    @Test func aJobPastItsTimeoutIsStoppedAndStoppingTheServiceEndsItsJobs() throws {
        let slow = try fixture("sleep 30", timeout: 1)
        let start = Date()
        do { _ = try slow.sink().submit(Self.request, replyTimeout: 20); Issue.record("an endless job succeeded") } catch {
            #expect("\(error)".contains("ran past the service's --job-timeout of 1 s and was stopped"), "\(error)")
        }
        #expect(Date().timeIntervalSince(start) < 8)
        // Stopping the service drops the client's connection and ends the job's process.
        let stopping = try fixture("sleep 30")
        let sink = try stopping.sink()
        Thread { Thread.sleep(forTimeInterval: 1); stopping.server.stop() }.start()
        #expect(throws: CheckpointServiceError.self) { try sink.submit(Self.request, replyTimeout: 20) }
        #expect(stopping.log.contains("runs as process "))
        let line = try #require(stopping.log.all.first { $0.contains("runs as process ") })
        let pid = try #require(Int32(line.components(separatedBy: "runs as process ")[1].prefix { $0.isNumber }))
        let end = Date(timeIntervalSinceNow: 5)
        while kill(pid, 0) == 0, Date() < end { Thread.sleep(forTimeInterval: 0.05) }
        #expect(kill(pid, 0) != 0, "the job's process \(pid) outlived the service")
        #expect(Date().timeIntervalSince(start) < 15)
    }

    @Test func anUnknownKindIsRefusedBeforeAnyProcessStarts() throws {
        let fixture = try fixture("exit 0")
        var request = Self.request
        request.kind = "format-disk"
        do { _ = try fixture.sink().submit(request, replyTimeout: 10); Issue.record("accepted") } catch {
            #expect("\(error)".contains("unknown job kind 'format-disk'; the service runs soup and distill jobs"), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: fixture.root.appendingPathComponent("jobs").path))
    }
}

/// Sinks are built in one place from options (`CheckpointSinks`), and say where they are.
@Suite struct CheckpointSinkFactoryTests {
    @Test func eachKindIsBuiltFromItsOptionsAndABadOneIsRefusedInOneLine() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let root = directory.url.appendingPathComponent("run/checkpoints")
        let local = try CheckpointSinks.make(CheckpointSinkOptions(directory: root, retention: CheckpointRetention(keepLast: 2, keepBest: 1)))
        #expect((local as? DirectoryCheckpointSink)?.retention == CheckpointRetention(keepLast: 2, keepBest: 1))
        #expect(local.location == root.path && local.directory == root)
        let token = String(repeating: "5e", count: 16)
        let remote = try CheckpointSinks.make(CheckpointSinkOptions(directory: root, service: "10.0.0.5:29600", token: token, identity: "rank 1 of 2"))
        let service = try #require(remote as? ServiceCheckpointSink)
        #expect(service.address == ServiceAddress(host: "10.0.0.5", port: 29600) && service.identity == "rank 1 of 2")
        #expect(service.cacheDirectory == directory.url.appendingPathComponent("run/checkpoint-cache"))
        #expect(remote.location == "the checkpoint service at 10.0.0.5:29600" && remote.directory == nil)
        for (service, token, expected) in [
            ("10.0.0.5", token, "checkpoint.service = 10.0.0.5: '10.0.0.5' is not a checkpoint service address; write HOST:PORT"),
            ("10.0.0.5:29600", "", "checkpoint.service = 10.0.0.5:29600: no job token for the checkpoint service"),
            ("10.0.0.5:29600", "hunter2", "checkpoint.service = 10.0.0.5:29600: the job token in TESSERA_JOB_TOKEN has at most"),
        ] {
            do { _ = try CheckpointSinks.make(CheckpointSinkOptions(directory: root, service: service, token: token)); Issue.record("built \(service)") } catch {
                #expect("\(error)".hasPrefix(expected) && !"\(error)".contains("\n"), "\(error)")
            }
        }
        do { _ = try CheckpointSinks.service(.client(of: "nowhere", identity: "soup client")); Issue.record("built") } catch {
            #expect("\(error)".hasPrefix("--service = nowhere: 'nowhere' is not a checkpoint service address"), "\(error)")
        }
    }

    /// The receipt of the last part says the step is committed, and where; the others' say only
    /// that their part is durable. Preparing proves the token.
    @Test func theServiceSinksReceiptSaysWhichPartCommittedTheStep() throws {
        let fixture = try ServiceFixture()
        let sink = try fixture.sink()
        #expect(try sink.prepare(owner: true) == [])
        let first = try sink.deliver(part(step: 3, rank: 1, ranks: 2, bytes: 1000))
        let last = try sink.deliver(part(step: 3, rank: 0, ranks: 2, bytes: 1000))
        let location = "the checkpoint service at 127.0.0.1:\(fixture.server.port)"
        #expect(first == CheckpointReceipt(step: 3, committed: false, location: location))
        #expect(last == CheckpointReceipt(step: 3, committed: true, location: location))
        #expect(throws: CheckpointServiceError.self) { try fixture.sink(token: String(repeating: "7f", count: 16)).prepare(owner: false) }
    }
}
