@testable import CheckpointService
import Checkpointing
import Foundation
import Networking
import Testing
import _TestSupport

/// Uploads that survive an outage of the service (issue 20): a part not acknowledged is
/// retried with backoff until the service is back, and fails only after `retrySeconds`,
/// naming the step and the service.
@Suite(.serialized) struct ServiceOutageTests {
    @Test func aPartIsDeliveredOnceTheServiceComesBack() throws {
        let fixture = try ServiceFixture()
        let port = fixture.server.port
        fixture.server.stop()
        let notes = LogLines()
        let sink = try ServiceCheckpointSink(address: ServiceAddress(host: "127.0.0.1", port: port), token: ServiceFixture.token,
                                             cacheDirectory: fixture.directory.url.appendingPathComponent("cache"), connectTimeout: 0.2,
                                             ioTimeout: 5, retrySeconds: 20)
        sink.note = { notes.add($0) }
        let root = fixture.root
        Thread {
            Thread.sleep(forTimeInterval: 1.5)
            let again = CheckpointServer(root: root, token: ServiceFixture.token, port: port, ioTimeout: 5, log: { _ in })
            try? again.start()
            Thread.sleep(forTimeInterval: 10)
            again.stop()
        }.start()
        let start = Date()
        try sink.deliver(part(step: 7, rank: 0, ranks: 1, bytes: 1000))
        #expect(Date().timeIntervalSince(start) > 1.4 && Date().timeIntervalSince(start) < 10)
        #expect(FileManager.default.fileExists(atPath: fixture.committed(7).appendingPathComponent("DONE").path))
        #expect(notes.contains("checkpoint of step 7 rank 0 not delivered"), "\(notes.all)")
    }

    @Test func aServiceThatStaysAwayFailsTheDeliveryNamingTheStepAndTheService() throws {
        let port = try Socket.freePort(host: "127.0.0.1")
        let sink = try ServiceCheckpointSink(address: ServiceAddress(host: "127.0.0.1", port: port), token: ServiceFixture.token,
                                             cacheDirectory: URL(fileURLWithPath: NSTemporaryDirectory()), connectTimeout: 0.2, retrySeconds: 2)
        sink.note = { _ in }
        let start = Date()
        do { try sink.deliver(part(step: 9, rank: 1, ranks: 2, bytes: 1000)); Issue.record("delivered to nothing") } catch {
            #expect("\(error)".contains("checkpoint service at 127.0.0.1:\(port): step 9 was not delivered in 2 s of retries"), "\(error)")
        }
        #expect(Date().timeIntervalSince(start) >= 2 && Date().timeIntervalSince(start) < 5)
        // Refusals are final: a wrong token is not retried.
        let fixture = try ServiceFixture()
        let wrong = try ServiceCheckpointSink(address: ServiceAddress(host: "127.0.0.1", port: fixture.server.port), token: JobToken.generate(),
                                              cacheDirectory: URL(fileURLWithPath: NSTemporaryDirectory()), retrySeconds: 30)
        let refused = Date()
        #expect(throws: CheckpointServiceError.self) { try wrong.deliver(part(step: 1, rank: 0, ranks: 1, bytes: 1000)) }
        #expect(Date().timeIntervalSince(refused) < 3)
    }
}
