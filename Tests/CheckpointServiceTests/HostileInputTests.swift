@testable import CheckpointService
import Checkpointing
import Foundation
import Testing
import _TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Numbers and names a peer or a file supplies, checked against named limits (issue 20).
@Suite(.serialized) struct HostileInputTests {
    static let sha = String(repeating: "ab", count: 32)

    func header(step: Int = 1, rank: Int = 0, ranks: Int = 1, names: [String] = ["model-00001-of-00001.safetensors"], size: Int = 10) -> PartHeader {
        PartHeader(step: step, rank: rank, ranks: ranks, files: names.map { PartFileEntry(name: $0, size: size, sha256: Self.sha) })
    }

    func refusal(_ header: PartHeader) -> String {
        do { try header.validate(); return "" } catch { return "\(error)" }
    }

    @Test func aPartOfTwoToThe40RanksIsRefusedNamingTheFieldAndTheLimit() {
        let text = refusal(header(ranks: 1 << 40))
        #expect(text.contains("ranks 1099511627776 is outside 1...\(ServiceLimits.maxRanks)"), "\(text)")
        #expect(refusal(header(ranks: ServiceLimits.maxRanks, names: [])) == "")
        #expect(refusal(header(step: -1)).contains("step -1 is outside 0...\(CheckpointLayout.maxStep)"))
        #expect(refusal(header(step: Int.max)).contains("step \(Int.max) is outside"))
        #expect(refusal(header(rank: 3, ranks: 2)).contains("rank 3 is outside 0...1"))
        #expect(refusal(header(size: -5)).contains("is outside 0...\(ServiceLimits.maxFileBytes)"))
        #expect(refusal(header(size: Int.max)).contains("is outside 0...\(ServiceLimits.maxFileBytes)"))
        let many = header(names: (0...ServiceLimits.maxFilesPerPart).map { "f\($0)" })
        #expect(refusal(many).contains("the number of files \(ServiceLimits.maxFilesPerPart + 1) is outside"))
    }

    @Test func namesWithANULOrTooLongForTheFileSystemAreRefusedUpFront() {
        #expect(refusal(header(names: ["model\u{0}.safetensors"])).contains("holds a NUL byte"))
        for length in [201, 253, 255, 256, 4000] {
            let text = refusal(header(names: [String(repeating: "n", count: length)]))
            #expect(text.contains("file name of \(length) bytes is over the \(ServiceLimits.maxFileNameBytes)-byte limit"), "\(text)")
        }
        #expect(refusal(header(names: [String(repeating: "n", count: ServiceLimits.maxFileNameBytes)])) == "")
        #expect(refusal(header(names: [String(repeating: "é", count: 101)])).contains("202 bytes"), "UTF-8 bytes are counted, not characters")
        // The client refuses it before connecting: nothing is sent, nothing "committed".
        let sink = try! ServiceCheckpointSink(address: ServiceAddress(host: "127.0.0.1", port: 9), token: String(repeating: "3c", count: 16),
                                              cacheDirectory: URL(fileURLWithPath: "/tmp"), connectTimeout: 0.1)
        let nul = CheckpointPart(step: 1, rank: 0, ranks: 1, files: [CheckpointFile(name: "a\u{0}b", data: Data([1]))])
        #expect(throws: CheckpointServiceError.self) { try sink.upload(nul) }
    }

    /// A file name the header check allows but whose path under a deep root would pass
    /// PATH_MAX: refused with the limit named, not acknowledged and lost on disk.
    @Test func aPathTooLongUnderTheRootIsRefusedBeforeAnythingIsWritten() throws {
        let fixture = try ServiceFixture()
        // A root of ~3950 bytes: a 32-byte name fits under it, a 200-byte one does not.
        var deep = fixture.directory.url
        while deep.path.utf8.count < 3950 {
            deep.appendPathComponent(String(repeating: "d", count: min(250, 3950 - deep.path.utf8.count)))
        }
        let server = CheckpointServer(root: deep, token: ServiceFixture.token, ioTimeout: 5, log: { _ in })
        let long = header(step: 3, names: [String(repeating: "m", count: ServiceLimits.maxFileNameBytes)])
        do { try server.checkPathLengths(long, id: 7); Issue.record("a \(deep.path.utf8.count)-byte root took a 200-byte name") } catch {
            #expect("\(error)".contains("over the \(ServiceLimits.maxPathBytes)-byte limit"), "\(error)")
        }
        try server.checkPathLengths(header(step: 3), id: 7)
    }

    @Test func stepsKeepAllTheirDigitsInNames() {
        let big = (1 << 32) + 5
        #expect(CheckpointLayout.directoryName(step: big) == "step-4294967301")
        #expect(CheckpointLayout.directoryName(step: 42) == "step-00000042")
        #expect(CheckpointLayout.step(ofDirectory: "step-4294967301") == big)
        #expect(CheckpointLayout.step(ofDirectory: CheckpointLayout.directoryName(step: CheckpointLayout.maxStep)) == CheckpointLayout.maxStep)
        for name in ["step--0000001", "step-1", "step-000000001", "step-+0000001", "step-9223372036854775807", "step-0000004x"] {
            #expect(CheckpointLayout.step(ofDirectory: name) == nil, "\(name)")
        }
        #expect(CheckpointLayout.step(ofHidden: ".step-4294967301.partial", suffix: ".partial") == big)
        #expect(CheckpointLayout.modelFile(rank: 99_999, ranks: 100_000) == "model-100000-of-100000.safetensors")
    }

    @Test func stepTwoToThe32Plus5RoundTripsThroughTheServiceUnderItsOwnName() throws {
        let fixture = try ServiceFixture()
        let big = (1 << 32) + 5
        #expect(try fixture.sink().upload(part(step: 500, rank: 0, ranks: 1, bytes: 1000)).committed)
        #expect(try fixture.sink().upload(part(step: big, rank: 0, ranks: 1, bytes: 1000)).committed)
        #expect(FileManager.default.fileExists(atPath: fixture.root.appendingPathComponent("step-4294967301/DONE").path))
        #expect(try fixture.sink().list().map(\.step) == [500, big])
        let fetched = try fixture.sink().fetch(step: big)
        #expect(fetched.lastPathComponent == "step-4294967301")
        #expect(try CheckpointStore.read(fetched).state.step == big)
    }

    @Test func aGetOfAnOutOfRangeStepIsRefusedNamingTheLimit() throws {
        let fixture = try ServiceFixture()
        do { _ = try fixture.sink().fetch(step: Int.max); Issue.record("fetched step Int.max") } catch {
            #expect("\(error)".contains("step \(Int.max) is outside 0...\(CheckpointLayout.maxStep)"), "\(error)")
        }
        #expect(try fixture.sink().list().isEmpty, "the service still serves")
    }

    /// Issue 20, finding 1: a manifest of 2^40 ranks on disk made every start-up die. It is
    /// moved aside, named in one line, and the service serves.
    @Test func aManifestOfTwoToThe40RanksOnDiskIsMovedAsideAndTheServiceServes() throws {
        let fixture = try ServiceFixture()
        fixture.server.stop()
        let root = fixture.root
        let manifests = root.appendingPathComponent(".step-00000005.parts")
        try FileManager.default.createDirectory(at: manifests, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: root.appendingPathComponent(".step-00000005.partial"), withIntermediateDirectories: true)
        try JSONEncoder().encode(header(step: 5, ranks: 1 << 40)).write(to: manifests.appendingPathComponent("rank-0.json"))
        // And a manifest that lies about its rank, and one that is not JSON.
        let other = root.appendingPathComponent(".step-00000006.parts")
        try FileManager.default.createDirectory(at: other, withIntermediateDirectories: true)
        try JSONEncoder().encode(header(step: 6, rank: 1, ranks: 2)).write(to: other.appendingPathComponent("rank-0.json"))
        let garbage = root.appendingPathComponent(".step-00000007.parts")
        try FileManager.default.createDirectory(at: garbage, withIntermediateDirectories: true)
        try Data("{\"step\": 7, \"ranks\": [[[[".utf8).write(to: garbage.appendingPathComponent("rank-0.json"))
        try fixture.restart()
        #expect(fixture.log.contains("moved step 5's unfinished state aside"), "\(fixture.log.all)")
        #expect(fixture.log.contains("ranks 1099511627776 is outside 1...65536"), "\(fixture.log.all)")
        #expect(fixture.log.contains("moved step 6's unfinished state aside"))
        #expect(fixture.log.contains("moved step 7's unfinished state aside"))
        for step in 5...7 { #expect(!FileManager.default.fileExists(atPath: fixture.server.manifestsURL(step).path)) }
        #expect(try fixture.sink().upload(part(step: 8, rank: 0, ranks: 1, bytes: 1000)).committed)
        let aside = try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(".rejected").path)
        #expect(aside.count == 3, "\(aside)")
    }
    /// Authenticated connections are capped: over `maxClients`, one more client that proved the
    /// token is refused in one line it may retry (`deliver` does), and is served once a slot frees.
    @Test func aClientOverTheCapIsRefusedInOneLineAndServedOnceOneLeaves() throws {
        let fixture = try ServiceFixture(maxClients: 1)
        let sink = try fixture.sink()
        var holding: ServiceConnection? = try sink.connect()
        try holding!.send(Frame(.list), while: "test")   // answered: it holds the one slot now
        #expect(try sink.reply(holding!, [StepInfo].self, while: "test") == [])
        do {
            _ = try sink.list()
            Issue.record("served a second client with --max-clients 1")
        } catch let error as CheckpointServiceError {
            #expect("\(error)".contains("busy: 1 authenticated clients are being served") && !"\(error)".contains("\n"), "\(error)")
            #expect(error.isTransient, "a busy service is retried")
        }
        #expect(fixture.log.contains("--max-clients"))
        holding = nil   // hangs up: its slot frees once the service sees it
        let deadline = Date(timeIntervalSinceNow: 5)
        var served: [StepInfo]?
        while served == nil, Date() < deadline {
            served = try? sink.list()
            if served == nil { Thread.sleep(forTimeInterval: 0.05) }
        }
        #expect(served == [], "not served after the other client left")
    }
}
