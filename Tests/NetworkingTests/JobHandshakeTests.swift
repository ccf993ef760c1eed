import Testing
@testable import Networking
import Foundation
import _TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Runs the two ends of a handshake over a socket pair, each on its own thread, recording every
/// byte each end sends.
func handshakeOverSocketPair(initiatorToken: String, acceptorToken: String)
    -> (initiator: Result<String, Error>, acceptor: Result<String, Error>, wire: [UInt8]) {
    var fds: [Int32] = [0, 0]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    let (left, right) = (fds[0], fds[1])
    defer { close(left); close(right) }
    let recorder = Recorder()
    @Sendable func recording(_ fd: Int32) -> JobHandshake.Transport {
        let deadline = Date(timeIntervalSinceNow: 5)
        let plain = JobHandshake.Transport.socket(fd, deadline: deadline)
        return JobHandshake.Transport(send: { recorder.add($0); try plain.send($0) }, receive: plain.receive)
    }
    final class Box: @unchecked Sendable { var result: Result<String, Error> = .failure(NetworkError.closed(doing: "a handshake not run")) }
    let acceptor = Box()
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        acceptor.result = Result { try JobHandshake(token: acceptorToken).accept(identity: "acceptor A", over: recording(right)).peer }
        shutdown(right, Int32(SHUT_RDWR))
        done.signal()
    }
    thread.start()
    let initiatorResult = Result { try JobHandshake(token: initiatorToken).initiate(identity: "initiator I", over: recording(left)).peer }
    shutdown(left, Int32(SHUT_RDWR))
    done.wait()
    return (initiatorResult, acceptor.result, recorder.all)
}

/// Bytes a scripted peer hands to the handshake under test, and what that handshake sent.
/// `reply` is called when the handshake asks for bytes beyond the script: it sees everything
/// sent so far (an attacker's view of the wire) and returns what to answer.
final class ScriptedPeer: @unchecked Sendable {
    private var pending: [UInt8]
    private(set) var sent: [UInt8] = []
    private let reply: ([UInt8]) -> [UInt8]

    init(script: [UInt8], reply: @escaping ([UInt8]) -> [UInt8] = { _ in [] }) {
        pending = script; self.reply = reply
    }

    var transport: JobHandshake.Transport {
        JobHandshake.Transport(send: { self.sent += $0 }, receive: { count in
            if self.pending.count < count { self.pending += self.reply(self.sent) }
            guard self.pending.count >= count else { throw NetworkError.closed(doing: "a script whose peer has nothing more to say") }
            defer { self.pending.removeFirst(count) }
            return Array(self.pending.prefix(count))
        })
    }
}

/// An honest handshake over a socket pair, returning what the initiator sent (its greeting,
/// then its proof), the bytes a recording attacker would replay.
func recordedInitiatorMessages(token: String, initiator: String, acceptor: String) throws -> [UInt8] {
    var fds: [Int32] = [0, 0]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
    let (left, right) = (fds[0], fds[1])
    defer { close(left); close(right) }
    let deadline = Date(timeIntervalSinceNow: 5)
    let recorder = Recorder()
    let plain = JobHandshake.Transport.socket(left, deadline: deadline)
    final class Box: @unchecked Sendable { var result: Result<String, Error> = .failure(NetworkError.closed(doing: "a handshake not run")) }
    let accepted = Box()
    let done = DispatchSemaphore(value: 0)
    Thread {
        accepted.result = Result { try JobHandshake(token: token).accept(identity: acceptor, over: .socket(right, deadline: deadline)).peer }
        done.signal()
    }.start()
    let peer = try JobHandshake(token: token).initiate(identity: initiator,
                                                       over: JobHandshake.Transport(send: { recorder.add($0); try plain.send($0) }, receive: plain.receive)).peer
    done.wait()
    let acceptedPeer = try accepted.result.get()
    #expect(peer == acceptor && acceptedPeer == initiator, "the recorded handshake itself succeeded")
    return recorder.all
}

@Suite struct JobHandshakeTests {
    static let token = "job-token-7f3c9a1e5b2d4c6e8a0b1d3f5e7c9a2b"

    @Test func bothEndsProveTheTokenWithoutItEverTravelling() throws {
        let run = handshakeOverSocketPair(initiatorToken: Self.token, acceptorToken: Self.token)
        #expect(try run.initiator.get() == "acceptor A")
        #expect(try run.acceptor.get() == "initiator I")
        #expect(run.wire.count > 2 * JobHandshake.nonceBytes + 2 * JobHandshake.proofBytes)
        #expect(!contains(run.wire, Array(Self.token.utf8)), "the token's bytes were on the wire")
        #expect(!contains(run.wire, Array(Self.token.utf8.prefix(12))), "a piece of the token was on the wire")
        #expect(contains(run.wire, Array("initiator I".utf8)) && contains(run.wire, Array("acceptor A".utf8)))
    }

    @Test func freshNoncesMakeEveryHandshakeDifferent() throws {
        let a = handshakeOverSocketPair(initiatorToken: Self.token, acceptorToken: Self.token).wire
        let b = handshakeOverSocketPair(initiatorToken: Self.token, acceptorToken: Self.token).wire
        #expect(a.count == b.count && a != b)
    }

    @Test func aWrongTokenIsRefusedOnBothSides() throws {
        let run = handshakeOverSocketPair(initiatorToken: "intruder", acceptorToken: Self.token)
        #expect(throws: HandshakeError.peerRefusedOurProof(peer: "acceptor A")) { try run.initiator.get() }   // v2: the acceptor checks first
        #expect(throws: HandshakeError.wrongToken(peer: "initiator I")) { try run.acceptor.get() }
        #expect(!contains(run.wire, Array(Self.token.utf8)) && !contains(run.wire, Array("intruder".utf8)))
    }

    /// Handshake v2: the side that dials proves first, so the proof a stranger can get is the
    /// initiator's. A stranger posing as an acceptor (a client dialed it) answers the
    /// initiator's greeting with its own, then hands the initiator's proof back as its own with
    /// "accepted". Only the role label in the MAC tells the two proofs apart: without it they
    /// are the same bytes, and the client would take the stranger for the service.
    @Test func theInitiatorsOwnProofReflectedBackIsRefused() throws {
        let greeting = JobHandshake.magic + [JobHandshake.version] + JobHandshake.nonce() + JobHandshake.lengthPrefixed(Array("mirror".utf8))
        let peer = ScriptedPeer(script: greeting) { sent in
            // The initiator sent its greeting and then its proof: the last 32 bytes.
            [1] + Array(sent.suffix(JobHandshake.proofBytes))
        }
        #expect(throws: HandshakeError.wrongToken(peer: "mirror")) {
            try JobHandshake(token: Self.token).initiate(identity: "initiator I", over: peer.transport)
        }
        #expect(peer.sent.count == JobHandshake.magic.count + 1 + JobHandshake.nonceBytes + 2 + "initiator I".utf8.count + JobHandshake.proofBytes,
                "the initiator sent its greeting and proof, so the stranger had a proof to reflect")
    }

    /// A stranger who connects to an acceptor gets no proof to work on (no offline oracle):
    /// after the greetings the acceptor waits for the initiator's proof, and refuses a wrong
    /// one having sent only its greeting and a zero verdict.
    @Test func anAcceptorRevealsNoProofBeforeTheInitiatorHasProved() throws {
        let greeting = JobHandshake.magic + [JobHandshake.version] + JobHandshake.nonce() + JobHandshake.lengthPrefixed(Array("stranger".utf8))
        let peer = ScriptedPeer(script: greeting) { _ in [UInt8](repeating: 0x5A, count: JobHandshake.proofBytes) }
        #expect(throws: HandshakeError.wrongToken(peer: "stranger")) {
            try JobHandshake(token: Self.token).accept(identity: "acceptor A", over: peer.transport)
        }
        let greetingBytes = JobHandshake.magic.count + 1 + JobHandshake.nonceBytes + 2 + "acceptor A".utf8.count
        #expect(peer.sent.count <= greetingBytes + 1 + JobHandshake.proofBytes)
        #expect(peer.sent.dropFirst(greetingBytes).allSatisfy { $0 == 0 }, "after its greeting the acceptor sent only a refusal")
    }

    /// An eavesdropper records an initiator's messages to an acceptor and plays them, byte for
    /// byte, to a new acceptor of the same job with the same identity. The new acceptor's fresh
    /// nonce is what the recorded proof does not cover: without it in the MAC the replay passes.
    @Test func aRecordedInitiatorReplayedToANewAcceptorIsRefused() throws {
        let recorded = try recordedInitiatorMessages(token: Self.token, initiator: "initiator I", acceptor: "acceptor A")
        #expect(recorded.count == JobHandshake.magic.count + 1 + JobHandshake.nonceBytes + 2 + "initiator I".utf8.count + JobHandshake.proofBytes)
        let replay = ScriptedPeer(script: recorded)
        #expect(throws: HandshakeError.wrongToken(peer: "initiator I")) {
            try JobHandshake(token: Self.token).accept(identity: "acceptor A", over: replay.transport)
        }
    }

    @Test func anInitiatorThatFakesItsProofIsRefused() throws {
        // A stranger that replies with the right shape but a made-up proof.
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let (left, right) = (fds[0], fds[1])
        defer { close(left); close(right) }
        let deadline = Date(timeIntervalSinceNow: 5)
        let forger = Thread {
            try? Socket.writeAll(left, JobHandshake.magic + [JobHandshake.version] + [UInt8](repeating: 7, count: 32) + [4, 0] + Array("evil".utf8), deadline: deadline)
            _ = try? Socket.readExactly(left, 4 + 1 + 32 + 2 + 1, deadline: deadline)   // v2: no proof before ours
            try? Socket.writeAll(left, [UInt8](repeating: 9, count: 32), deadline: deadline)
        }
        forger.start()
        #expect(throws: HandshakeError.wrongToken(peer: "evil")) {
            try JobHandshake(token: Self.token).accept(identity: "A", over: .socket(right, deadline: deadline))
        }
    }

    @Test func garbageIsNotAHandshake() throws {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let deadline = Date(timeIntervalSinceNow: 5)
        try Socket.writeAll(fds[0], Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n-----------------".utf8), deadline: deadline)
        do {
            try JobHandshake(token: Self.token).accept(identity: "A", over: .socket(fds[1], deadline: deadline))
            Issue.record("garbage was accepted")
        } catch let error as HandshakeError {
            guard case .notAHandshake = error else { Issue.record("\(error)"); return }
            #expect("\(error)".contains("not a Tessera handshake"))
        }
    }
}
