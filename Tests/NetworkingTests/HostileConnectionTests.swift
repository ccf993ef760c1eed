import Testing
@testable import Networking
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The handshake and the rendezvous against strangers (issue 20): no proof for a stranger,
/// weak tokens refused, silent connections that delay nobody.
@Suite struct HostileConnectionTests {
    static let token = JobToken.generate()

    /// A stranger that connects and greets sees the acceptor's greeting only; its made-up
    /// proof gets a refusal of zeros, never the acceptor's HMAC (no offline oracle).
    @Test func aStrangerGetsNoProofBeforeProvingItself() throws {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let (stranger, acceptor) = (fds[0], fds[1])
        defer { close(stranger); close(acceptor) }
        let deadline = Date(timeIntervalSinceNow: 5)
        final class Box: @unchecked Sendable { var error: Error? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        Thread {
            do { try JobHandshake(token: Self.token).accept(identity: "A", over: .socket(acceptor, deadline: deadline)) } catch { box.error = error }
            done.signal()
        }.start()
        let strangerNonce = [UInt8](repeating: 5, count: 32)
        try Socket.writeAll(stranger, JobHandshake.magic + [JobHandshake.version] + strangerNonce + [1, 0] + Array("S".utf8), deadline: deadline)
        let greeting = try Socket.readExactly(stranger, 4 + 1 + 32 + 2 + 1, deadline: deadline)
        // Nothing more until the stranger proves itself.
        var pfd = pollfd(fd: stranger, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, 300) == 0, "the acceptor sent more than its greeting before any proof")
        try Socket.writeAll(stranger, [UInt8](repeating: 0, count: 32), deadline: deadline)
        let reply = try Socket.readExactly(stranger, 33, deadline: deadline)
        done.wait()
        #expect(reply == [0] + [UInt8](repeating: 0, count: 32))
        #expect(box.error as? HandshakeError == .wrongToken(peer: "S"))
        #expect(greeting.count == 40 && Array(greeting.prefix(4)) == JobHandshake.magic, "a greeting, and nothing of a proof")
    }

    @Test func tokensUnder128BitsAreRefusedWithHowToMakeOne() {
        for weak in ["hunter2", "secret", String(repeating: "a", count: 64), "0123456789abcdef0123456789abcde", "multinode-test-12345"] {
            do { try JobToken.validate(weak, source: "TESSERA_JOB_TOKEN"); Issue.record("accepted '\(weak)'") } catch {
                #expect("\(error)".contains("TESSERA_JOB_TOKEN") && "\(error)".contains("tessera token"), "\(error)")
            }
        }
        for strong in [JobToken.generate(), "0123456789abcdef0123456789abcdef", "0123456789ABCDEF0123456789ABCDEF"] {
            #expect(throws: Never.self) { try JobToken.validate(strong, source: "test") }
        }
        // Random 32-hex-digit tokens (`openssl rand -hex 16`) always pass, runs of equal digits
        // and all: the former rule (a third equal character in a row adds nothing) refused
        // about one in nine, which made test-ckpt-service's random token fail a suite run.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let random = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
            #expect(throws: Never.self) { try JobToken.validate(random, source: "test") }
        }
        #expect(throws: Never.self) { try JobToken.validate("aaa3456789abcdef0123456789abcdef", source: "test") }
        let fresh = JobToken.generate()
        #expect(fresh.count == 64 && fresh.allSatisfy(\.isHexDigit) && fresh != JobToken.generate())
    }

    /// At most `capacity` handshakes at once: the oldest is shut down first, the newest kept.
    @Test func theOldestUnauthenticatedConnectionIsDroppedFirst() throws {
        let gate = UnauthenticatedConnections(capacity: 3)
        var pairs: [[Int32]] = []
        for _ in 0..<4 {
            var fds: [Int32] = [0, 0]
            precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
            pairs.append(fds)
        }
        defer { pairs.joined().forEach { close($0) } }
        var evicted: [String?] = []
        for (i, pair) in pairs.enumerated() { evicted.append(gate.admit(pair[1], peer: "peer \(i)").evicted) }
        #expect(evicted == [nil, nil, nil, "peer 0"])
        #expect(gate.count == 3)
        var byte: UInt8 = 0
        #expect(recv(pairs[0][1], &byte, 1, Int32(MSG_DONTWAIT)) == 0, "the oldest was shut down")
        #expect(recv(pairs[3][1], &byte, 1, Int32(MSG_DONTWAIT)) < 0, "the newest is still open (nothing to read yet)")
        #expect(gate.dropOldest() == "peer 1" && gate.count == 2, "out of descriptors: the oldest goes first")
    }
}
