@testable import CheckpointService
import Checkpointing
import Foundation
import Networking
import Testing
import _TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Sealed frames on the service channel (issue 20, finding 2): what a proxy on the path can do
/// (flip a byte, replay, reorder, drop or inject a frame) ends the connection, names the peer,
/// and commits nothing; the bytes on the wire are unreadable.
@Suite(.serialized) struct SealedFrameTests {
    /// Both ends of one session, from a real handshake over a socket pair.
    static func seals(token: String = ServiceFixture.token) throws -> (client: FrameSeal, service: FrameSeal) {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        final class Box: @unchecked Sendable { var session: JobHandshake.Session? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        Thread {
            box.session = try? JobHandshake(token: token).accept(identity: "service", over: .socket(fds[1], deadline: Date(timeIntervalSinceNow: 5)))
            done.signal()
        }.start()
        let client = try JobHandshake(token: token).initiate(identity: "client", over: .socket(fds[0], deadline: Date(timeIntervalSinceNow: 5)))
        done.wait()
        return (FrameSeal(client, initiator: true), FrameSeal(try #require(box.session), initiator: false))
    }

    /// The sealed bytes of a frame without their length prefix (what `open` takes).
    static func body(_ wire: [UInt8]) -> [UInt8] { Array(wire.dropFirst(4)) }

    @Test func flippedReplayedReorderedDroppedOrInjectedFramesDoNotOpen() throws {
        let frames = (0..<3).map { Frame(.fileData, Array(repeating: UInt8($0), count: 1000)).unsealed }
        // In order: each opens to what was sent, and the plaintext is not on the wire.
        var (client, service) = try Self.seals()
        let wire = try frames.map { try client.seal($0) }
        for (sent, bytes) in zip(frames, wire) {
            #expect(service.open(Self.body(bytes)) == sent)
            #expect(!Array(bytes).indices.dropLast(8).contains { Array(bytes[$0..<($0 + 8)]) == Array(sent[8..<16]) })
        }
        // Flipped.
        (client, service) = try Self.seals()
        var flipped = Self.body(try client.seal(frames[0]))
        flipped[500] ^= 1
        #expect(service.open(flipped) == nil)
        // Replayed: the first frame again where the second belongs.
        (client, service) = try Self.seals()
        let first = Self.body(try client.seal(frames[0]))
        #expect(service.open(first) != nil)
        #expect(service.open(first) == nil)
        // Reordered, or one dropped: the second arrives first.
        (client, service) = try Self.seals()
        _ = try client.seal(frames[0])
        #expect(service.open(Self.body(try client.seal(frames[1]))) == nil)
        // Injected: sealed under another session's key (a stranger, or a replay from another connection).
        let other = try Self.seals()
        (client, service) = try Self.seals()
        #expect(service.open(Self.body(try other.client.seal(frames[0]))) == nil)
        // A direction's key never opens the other direction's frames.
        (client, service) = try Self.seals()
        #expect(client.open(Self.body(try client.seal(frames[0]))) == nil)
    }

    /// Through the service: a replayed and an injected frame in the middle of a part each end
    /// the connection with a refusal naming what happened, the log names the peer, and the
    /// step is not committed; an honest upload after them is.
    @Test func aTamperedUploadCommitsNothingAndNamesThePeer() throws {
        let fixture = try ServiceFixture()
        let p = part(step: 6, rank: 0, ranks: 1, bytes: 3000)
        let header = PartHeader(step: 6, rank: 0, ranks: 1,
                                files: p.files.map { PartFileEntry(name: $0.name, size: $0.data.count, sha256: CheckpointCommit.sha256($0.data)) })
        for attack in ["replay", "inject"] {
            let connection = try fixture.sink().connect()
            let seal = try #require(connection.seal)
            try connection.send(.putPart, json: header, while: "test")
            let chunk = Frame(.fileData, Array(p.files[0].data.prefix(1000))).unsealed
            let wire = try seal.seal(chunk)
            try connection.write(wire, while: "test")
            if attack == "replay" {
                try connection.write(wire, while: "test")
            } else {
                try connection.write(try Self.seals().client.seal(chunk), while: "test")
            }
            let reply = try connection.receive(while: "test")
            #expect(reply.type == .error && String(decoding: reply.payload, as: UTF8.self).contains("fails authentication"), "\(attack)")
        }
        #expect(fixture.log.contains("at 127.0.0.1:"), "\(fixture.log.all)")
        #expect(fixture.log.all.filter { $0.contains("fails authentication") }.count == 2, "\(fixture.log.all)")
        #expect(!FileManager.default.fileExists(atPath: fixture.committed(6).path))
        #expect(try fixture.sink().upload(p).committed)
    }
}
