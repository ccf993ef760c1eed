import Testing
import Collectives
@testable import CollectivesTCP
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The by-address protocol between two meshes joined by a socket pair, ranks as threads of this
/// process (which reads "the peer's" memory from itself: same calls, same checks).
@Suite struct SameHostMemoryTests {
    /// Two meshes: rank 0 and rank 1, each reading the other's payloads at `pid`.
    static func pair(pid: Int32 = getpid(), timeout: Double = 10) -> (TCPMesh, TCPMesh) {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        func pairs(_ peer: Int) -> SameHostMemory.Pairs {
            var p = SameHostMemory.Pairs(pids: [nil, nil], sendsByAddress: [false, false])
            p.pids[peer] = pid
            p.sendsByAddress[peer] = true
            return p
        }
        return (TCPMesh(worldRank: 0, worldSize: 2, sockets: [-1, fds[0]], timeoutSeconds: timeout, sameHost: pairs(1)),
                TCPMesh(worldRank: 1, worldSize: 2, sockets: [fds[1], -1], timeoutSeconds: timeout, sameHost: pairs(0)))
    }

    static func both(_ a: @escaping () throws -> Void, _ b: @escaping () throws -> Void) -> [Result<Void, Error>] {
        InProcessCommunicator.run(size: 2) { local in try (local.rank == 0 ? a : b)() }
    }

    @Test func aFrameThatArrivesBeforeItsReceiveWaitsInTheStashAndIsReadLater() throws {
        let (m0, m1) = Self.pair()
        let count = 300_007   // over the by-address minimum, not a multiple of the copy segment
        let first = (0..<count).map { Float($0) }, second = (0..<count).map { -Float($0) * 0.5 }
        var gotFirst = [Float](repeating: 0, count: count), gotSecond = [Float](repeating: 0, count: count)
        let results = Self.both({
            // Communicator 7's frame goes first, but rank 1 asks for communicator 8's first.
            try first.withUnsafeBytes { a in try second.withUnsafeBytes { b in
                try m0.transfer("test", sends: [OutgoingFrame(peer: 1, communicator: 7, tag: -1, payload: a),
                                                OutgoingFrame(peer: 1, communicator: 8, tag: -1, payload: b)], receives: [])
            } }
        }, {
            try gotSecond.withUnsafeMutableBytes { try m1.transfer("test", sends: [], receives: [ExpectedFrame(peer: 0, communicator: 8, tag: -1, destination: $0)]) }
            try gotFirst.withUnsafeMutableBytes { try m1.transfer("test", sends: [], receives: [ExpectedFrame(peer: 0, communicator: 7, tag: -1, destination: $0)]) }
        })
        for r in results { try r.get() }
        #expect(gotFirst == first)
        #expect(gotSecond == second)
    }

    @Test func aCombiningReceiveFoldsTheWholePayloadInWithItsOffsets() throws {
        let (m0, m1) = Self.pair()
        let count = 400_003
        let incoming = (0..<count).map { Float($0 % 1000) }
        var mine = (0..<count).map { Float($0 % 7) }
        let expected = zip(mine, incoming).map { $0 + $1 }
        let results = Self.both({
            try incoming.withUnsafeBytes { try m0.transfer("test", sends: [OutgoingFrame(peer: 1, communicator: 1, tag: -1, payload: $0)], receives: []) }
        }, {
            try mine.withUnsafeMutableBytes { raw in
                let floats = raw.baseAddress!.assumingMemoryBound(to: Float.self)
                try m1.transfer("test", sends: [], receives: [ExpectedFrame(peer: 0, communicator: 1, tag: -1, destination: raw) { offset, bytes in
                    ReduceOp.sum.combine(into: floats + offset / 4, from: bytes.baseAddress!.assumingMemoryBound(to: Float.self), count: bytes.count / 4)
                }])
            }
        })
        for r in results { try r.get() }
        #expect(mine == expected)
    }

    /// Where one direction's probe read fails (a kernel that forbids it), that direction uses the
    /// socket and the other still goes by address; traffic both ways arrives intact.
    @Test func aFailedProbeLeavesThatDirectionOnTheSocket() throws {
        let child = fork()
        if child == 0 { _exit(0) }
        var status: Int32 = 0
        waitpid(child, &status, 0)
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let sockets: [[Int32]] = [[-1, fds[0]], [fds[1], -1]]
        let deadline = Date(timeIntervalSinceNow: 10)
        let negotiated = InProcessCommunicator.run(size: 2) { local in
            // Rank 1 advertises a process that has ended: rank 0 cannot read "its" memory.
            try SameHostMemory.negotiate(sockets: sockets[local.rank], worldRank: local.rank, enabled: true, deadline: deadline,
                                         pid: local.rank == 1 ? child : getpid())
        }
        let p0 = try negotiated[0].get(), p1 = try negotiated[1].get()
        #expect(p0.pids[1] == nil && !p1.sendsByAddress[0], "rank 1 -> 0 must use the socket")
        #expect(p1.pids[0] == getpid() && p0.sendsByAddress[1], "rank 0 -> 1 still goes by address")
        let m0 = TCPMesh(worldRank: 0, worldSize: 2, sockets: sockets[0], timeoutSeconds: 10, sameHost: p0)
        let m1 = TCPMesh(worldRank: 1, worldSize: 2, sockets: sockets[1], timeoutSeconds: 10, sameHost: p1)
        let count = 200_003
        let a = (0..<count).map { Float($0) }, b = (0..<count).map { Float(-$0) }
        var atOne = [Float](repeating: 0, count: count), atZero = [Float](repeating: 0, count: count)
        let results = Self.both({
            try a.withUnsafeBytes { send in try atZero.withUnsafeMutableBytes { into in
                try m0.transfer("test", sends: [OutgoingFrame(peer: 1, communicator: 1, tag: -1, payload: send)],
                                receives: [ExpectedFrame(peer: 1, communicator: 1, tag: -1, destination: into)])
            } }
        }, {
            try b.withUnsafeBytes { send in try atOne.withUnsafeMutableBytes { into in
                try m1.transfer("test", sends: [OutgoingFrame(peer: 0, communicator: 1, tag: -1, payload: send)],
                                receives: [ExpectedFrame(peer: 0, communicator: 1, tag: -1, destination: into)])
            } }
        })
        for r in results { try r.get() }
        #expect(atOne == a && atZero == b)
    }

    @Test func aPeerWhoseMemoryCannotBeReadIsNamedAsLost() throws {
        // A process that has ended: reading "its" memory fails like reading a crashed rank's.
        let child = fork()
        if child == 0 { _exit(0) }
        var status: Int32 = 0
        waitpid(child, &status, 0)
        let (m0, m1) = Self.pair(pid: child, timeout: 5)
        let payload = [Float](repeating: 1, count: 100_000)
        var into = [Float](repeating: 0, count: 100_000)
        let results = Self.both({
            try payload.withUnsafeBytes { try m0.transfer("allReduce", sends: [OutgoingFrame(peer: 1, communicator: 1, tag: -1, payload: $0)], receives: []) }
        }, {
            try into.withUnsafeMutableBytes { try m1.transfer("allReduce", sends: [], receives: [ExpectedFrame(peer: 0, communicator: 1, tag: -1, destination: $0)]) }
        })
        let reader = "\(results[1])"
        #expect(reader.contains("rank 0 was lost") && reader.contains("memory could not be read"), "\(reader)")
        // The sender hears of it (abort frame) instead of waiting out its deadline.
        let sender = "\(results[0])"
        #expect(sender.contains("rank 0") && !sender.contains("timed out"), "\(sender)")
    }
}
