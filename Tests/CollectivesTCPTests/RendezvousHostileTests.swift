import Testing
import Collectives
@testable import CollectivesTCP
import Foundation
import _TestSupport
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// The rendezvous against strangers (issue 20): a weak token refused before anything is sent,
/// silent connections that delay no rank, a stranger at the master address that learns nothing.
/// (The handshake itself is tested in NetworkingTests.)
@Suite struct RendezvousHostileTests {
    static let token = JobToken.generate()

    @Test func aJobSpecWithAWeakTokenIsRefused() {
        var env = ["TESSERA_RANK": "0", "TESSERA_WORLD_SIZE": "1", "TESSERA_MASTER_ADDR": "127.0.0.1", "TESSERA_MASTER_PORT": "29500", "TESSERA_JOB_TOKEN": "hunter2"]
        #expect(throws: CollectiveError.self) { try TCPJobSpec(environment: env) }
        env["TESSERA_JOB_TOKEN"] = Self.token
        #expect(throws: Never.self) { try TCPJobSpec(environment: env) }
    }

    /// Issue 20, finding 4: twelve silent connections, handled one at a time with 5 s each,
    /// made a rendezvous of 30 s fail. Handshakes now run side by side: rank 1 joins at once.
    @Test func silentConnectionsToTheMasterPortDelayNoRank() throws {
        let listener = try Socket.listen(host: "127.0.0.1", port: 0)
        defer { close(listener.fd) }
        let silent = try (0..<12).map { _ in
            try Socket.connect(host: "127.0.0.1", port: listener.port, deadline: Date(timeIntervalSinceNow: 2), waitingFor: "test")
        }
        defer { silent.forEach { close($0) } }
        let spec0 = TCPJobSpec(rank: 0, worldSize: 2, masterAddress: "127.0.0.1", masterPort: listener.port, token: Self.token)
        Thread {
            guard let fd = try? Socket.connect(host: "127.0.0.1", port: listener.port, deadline: Date(timeIntervalSinceNow: 2), waitingFor: "test") else { return }
            let hello = Hello(rank: 1, worldSize: 2, host: "127.0.0.1", port: 1)
            _ = try? JobHandshake(token: Self.token).initiate(identity: hello.identity, over: .socket(fd, deadline: Date(timeIntervalSinceNow: 5)))
            Thread.sleep(forTimeInterval: 3)
            close(fd)
        }.start()
        let start = Date()
        var joined: [Int] = []
        try Rendezvous.acceptPeers(listener.fd, spec0, expecting: [1], deadline: Date(timeIntervalSinceNow: 10), timeoutSeconds: 10) { hello, fd, _ in
            joined.append(hello.rank); close(fd)
        }
        #expect(joined == [1])
        #expect(Date().timeIntervalSince(start) < 2, "rank 1 waited \(Date().timeIntervalSince(start)) s behind silent strangers")
    }

    /// What a rank sends to whoever listens at the master address: a stranger that does not
    /// know the token sees the rank's greeting and nothing else, never the token.
    @Test func aRankSendsItsTokenToNobodyAtTheMasterAddress() throws {
        let listener = try Socket.listen(host: "127.0.0.1", port: 0)
        defer { close(listener.fd) }
        let recorder = Recorder()
        let stranger = Thread {
            guard let (fd, _) = try? Socket.accept(listener.fd, deadline: Date(timeIntervalSinceNow: 10)) else { return }
            var buffer = [UInt8](repeating: 0, count: 4096)
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let end = Date(timeIntervalSinceNow: 1.5)
            while Date() < end, poll(&pfd, 1, 100) >= 0 {
                if pfd.revents != 0 {
                    let n = recv(fd, &buffer, buffer.count, 0)
                    if n <= 0 { break }
                    recorder.add(Array(buffer[0..<n]))
                }
            }
            close(fd)
        }
        stranger.start()
        let spec = TCPJobSpec(rank: 1, worldSize: 2, masterAddress: "127.0.0.1", masterPort: listener.port, token: Self.token)
        #expect(throws: CollectiveError.self) { try TCPCommunicator.world(spec, timeoutSeconds: 3) }
        let sent = recorder.all
        #expect(Array(sent.prefix(4)) == JobHandshake.magic, "\(sent.prefix(16))")
        #expect(!contains(sent, Array(Self.token.utf8)))
        #expect(contains(sent, Array("rank 1 of 2".utf8)))
    }
}
