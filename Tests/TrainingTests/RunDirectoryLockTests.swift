import Testing
import Collectives
import Foundation
import Training
import TrainingConfig
import _TestSupport

@Suite struct RunDirectoryLockTests {
    static let host = RunDirectoryHolder.current().host

    /// A pid that no process has: a child that has exited and been reaped.
    static func deadPID() throws -> Int32 {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()
        return child.processIdentifier
    }

    func lockFile(_ directory: TemporaryDirectory) -> String { directory.file(RunDirectoryLock.fileName) }

    @Test func aHeldDirectoryIsRefusedNamingTheHolder() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let first = try RunDirectoryLock.acquire(runDirectory: directory.url)
        #expect(first.holder.pid == getpid() && first.holder.host == Self.host && first.tookOverFrom == nil)
        let error = #expect(throws: RunDirectoryLockError.self) { try RunDirectoryLock.acquire(runDirectory: directory.url) }
        guard case let .held(runDirectory, holder)? = error else { Issue.record("expected .held, got \(String(describing: error))"); return }
        #expect(runDirectory == directory.path && holder == first.holder)
        let line = error?.description ?? ""
        #expect(line.contains("pid \(getpid()) on host \(Self.host)") && !line.contains("\n"))
        withExtendedLifetime(first) {}
    }

    @Test func releasingRemovesTheFileAndFreesTheDirectory() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let first = try RunDirectoryLock.acquire(runDirectory: directory.url.appendingPathComponent("new/run"))
        #expect(FileManager.default.fileExists(atPath: first.path))
        first.release()
        #expect(!FileManager.default.fileExists(atPath: first.path))
        first.release()   // twice is harmless
        let second = try RunDirectoryLock.acquire(runDirectory: directory.url.appendingPathComponent("new/run"))
        #expect(second.tookOverFrom == nil)
        // Dropping the last reference releases it too.
        var third: RunDirectoryLock? = try RunDirectoryLock.acquire(runDirectory: directory.url)
        #expect(third != nil)
        third = nil
        #expect(!FileManager.default.fileExists(atPath: lockFile(directory)))
        withExtendedLifetime(second) {}
    }

    @Test func theLockOfAProcessThatIsGoneIsTakenOver() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let dead = try Self.deadPID()
        try "host=\(Self.host)\npid=\(dead)\nstarted=2020-01-01T00:00:00Z\n".write(toFile: lockFile(directory), atomically: true, encoding: .utf8)
        let lock = try RunDirectoryLock.acquire(runDirectory: directory.url)
        #expect(lock.tookOverFrom?.pid == dead)
        let text = try String(contentsOfFile: lockFile(directory), encoding: .utf8)
        #expect(text.contains("pid=\(getpid())\n") && text.contains("host=\(Self.host)\n"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == [RunDirectoryLock.fileName])
    }

    /// A live pid that now belongs to a process started at another time (pid reuse), or a
    /// lock from an earlier boot of this host: its holder is gone.
    @Test(arguments: ["process_start=1", "boot_id=an-earlier-boot"])
    func aReusedPidOrAnEarlierBootIsTakenOver(field: String) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        try "host=\(Self.host)\npid=\(getppid())\nstarted=2020-01-01T00:00:00Z\n\(field)\n".write(toFile: lockFile(directory), atomically: true, encoding: .utf8)
        let lock = try RunDirectoryLock.acquire(runDirectory: directory.url)
        #expect(lock.tookOverFrom?.pid == getppid())
    }

    /// A holder killed but not yet reaped (a rank whose mpirun exited before its parent could
    /// wait for it): a zombie holds nothing, even with its own start time recorded.
    @Test func theLockOfAZombieIsTakenOver() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { argv.forEach { free($0) } }
        #expect(posix_spawn(&pid, "/bin/true", nil, nil, argv, nil) == 0)
        defer { var status: Int32 = 0; waitpid(pid, &status, 0) }   // reaped only after the check
        let deadline = Date(timeIntervalSinceNow: 10)
        func state() -> String? {
            (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)).flatMap { $0.split(separator: ")").last?.split(separator: " ").first.map(String.init) }
        }
        while state() != "Z", Date() < deadline { usleep(10_000) }
        try #require(state() == "Z", "the child never became a zombie")
        let start = try #require(try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8).split(separator: ")").last?.split(separator: " ")[19])
        try "host=\(Self.host)\npid=\(pid)\nstarted=2020-01-01T00:00:00Z\nprocess_start=\(start)\n".write(toFile: lockFile(directory), atomically: true, encoding: .utf8)
        let lock = try RunDirectoryLock.acquire(runDirectory: directory.url)
        #expect(lock.tookOverFrom?.pid == pid)
    }

    /// A live process that is not this one: refused.
    @Test func aLiveHolderIsNotTakenOver() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        try "host=\(Self.host)\npid=\(getppid())\nstarted=2020-01-01T00:00:00Z\n".write(toFile: lockFile(directory), atomically: true, encoding: .utf8)
        let error = #expect(throws: RunDirectoryLockError.self) { try RunDirectoryLock.acquire(runDirectory: directory.url) }
        #expect(error?.description.contains("pid \(getppid())") == true)
    }

    @Test func aHolderOnAnotherHostIsNeverTakenOver() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let dead = try Self.deadPID()   // gone here, but it names another host's process
        let text = "host=other-node.invalid\npid=\(dead)\nstarted=2020-01-01T00:00:00Z\n"
        try text.write(toFile: lockFile(directory), atomically: true, encoding: .utf8)
        let error = #expect(throws: RunDirectoryLockError.self) { try RunDirectoryLock.acquire(runDirectory: directory.url) }
        let line = error?.description ?? ""
        #expect(line.contains("pid \(dead) on host other-node.invalid") && line.contains("remove \(lockFile(directory))"))
        #expect(try String(contentsOfFile: lockFile(directory), encoding: .utf8) == text)
    }

    @Test func aLockFileNamingNoHolderIsReported() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        _ = FileManager.default.createFile(atPath: lockFile(directory), contents: nil)
        let error = #expect(throws: RunDirectoryLockError.self) { try RunDirectoryLock.acquire(runDirectory: directory.url) }
        #expect(error == .unreadable(lockFile: lockFile(directory), reason: "it is empty"))
    }

    /// Through `Trainer.run` on two ranks: only rank 0 takes the lock, a held run.dir stops both
    /// ranks with the same line, and the lock goes when the run ends (finished or stopped).
    @Test func trainerRunHoldsRunDirOnRankZeroAndEveryRankSeesARefusal() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let run = directory.url.appendingPathComponent("run")
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: run.path, steps: 3))
        let held = try RunDirectoryLock.acquire(runDirectory: run)
        let refusals = InProcessCommunicator.run(size: 2) { comm -> String in
            do { _ = try Trainer(config: config, world: comm).run(resume: false); return "ran" } catch { return "\(error)" }
        }
        let lines = try refusals.map { try $0.get() }
        #expect(lines[0] == lines[1] && lines[0].contains("pid \(getpid())") && lines[0].hasPrefix("run.dir \(run.path) is in use"))
        held.release()

        let seen = InProcessCommunicator.run(size: 2) { comm -> [String] in
            let trainer = try Trainer(config: config, world: comm)
            var events: [String] = []
            trainer.onRunEvent = { event in
                switch event {
                case let .holdingRunDirectory(lock): events.append("holding \(lock.path)")
                case let .newestCheckpoint(url, stopping): events.append("newest \(url?.lastPathComponent ?? "none")\(stopping ? " (stop)" : "")")
                }
            }
            _ = try trainer.run(resume: false, stopAt: 2)
            trainer.stopRequested = { true }
            do { _ = try trainer.run(resume: true) } catch is TrainingInterrupted {}
            return events
        }
        let events = try seen.map { try $0.get() }
        let lock = run.appendingPathComponent(RunDirectoryLock.fileName).path
        #expect(events[0] == ["holding \(lock)", "newest none", "newest step-00000002",
                              "holding \(lock)", "newest step-00000002", "newest step-00000003 (stop)"])
        #expect(events[1].isEmpty)
        #expect(!FileManager.default.fileExists(atPath: lock))
    }
}
