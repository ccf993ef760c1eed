import Collectives
@testable import CollectivesTCP
import Foundation
import Networking
import Testing
import _TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The sealed training mesh (`parallel.tcp_seal`, issue 20): what a proxy on the path can do to
/// a sealed connection (flip a byte, replay, reorder, drop or inject a record) ends the transfer
/// with `CollectiveError.tampered` naming the rank the record came from, never a hang or wrong
/// numbers; and sealing changes no result.
@Suite(.serialized) struct SealedMeshTests {
    static let token = String(repeating: "7c", count: 32)

    /// Both ends' seals of one session, from a real handshake over a socket pair.
    static func seals() throws -> (initiator: SessionSeal, acceptor: SessionSeal) {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let (dialing, accepting) = (fds[0], fds[1])
        defer { close(dialing); close(accepting) }
        final class Box: @unchecked Sendable { var session: JobHandshake.Session? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        Thread {
            box.session = try? JobHandshake(token: token).accept(identity: "rank 0", over: .socket(accepting, deadline: Date(timeIntervalSinceNow: 5)))
            done.signal()
        }.start()
        let initiator = try JobHandshake(token: token).initiate(identity: "rank 1", over: .socket(dialing, deadline: Date(timeIntervalSinceNow: 5)))
        done.wait()
        return (SessionSeal(initiator, initiator: true), SessionSeal(try #require(box.session), initiator: false))
    }

    /// The records a sealed rank 1 sends for one frame: its header, then its payload in
    /// `TCPMesh.sealChunkBytes` pieces.
    static func records(_ seal: SessionSeal, payload: [UInt8]) throws -> [[UInt8]] {
        var out = [try seal.seal(FrameHeader(tag: -1, communicator: 0, length: UInt64(payload.count)).bytes)]
        var offset = 0
        while offset < payload.count {
            let count = min(TCPMesh.sealChunkBytes, payload.count - offset)
            out.append(try seal.seal(Array(payload[offset..<(offset + count)])))
            offset += count
        }
        return out
    }

    static let count = 600_000   // two payload records per frame
    static let payloads = (0..<2).map { frame in (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ frame) } }

    /// Rank 0's real sealed mesh receives two frames from a hand-driven rank 1, whose honest
    /// records `tamper` may change first. The error rank 0 throws (nil if none), and what it received.
    static func receive(_ tamper: (inout [[[UInt8]]], SessionSeal) throws -> Void) throws -> (error: Error?, received: [[UInt8]]) {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let (hand, mine) = try seals()
        let (meshEnd, handEnd) = (fds[0], fds[1])
        let mesh = TCPMesh(worldRank: 0, worldSize: 2, sockets: [-1, meshEnd], timeoutSeconds: 5, seals: [nil, mine])
        var frames = try payloads.map { try records(hand, payload: $0) }
        try tamper(&frames, hand)
        let wire = frames.flatMap { $0.flatMap { $0 } }
        let written = DispatchSemaphore(value: 0)
        Thread {   // blocking writes, beside the mesh's reads; the socket stays open until the test is done
            _ = try? Socket.writeAll(handEnd, wire, deadline: Date(timeIntervalSinceNow: 10))
            written.signal()
        }.start()
        defer { written.wait(); close(handEnd) }
        var received = [[UInt8]](repeating: [UInt8](repeating: 0, count: count), count: 2)
        do {
            for i in 0..<2 {
                try received[i].withUnsafeMutableBytes {
                    try mesh.transfer("test", sends: [], receives: [ExpectedFrame(peer: 1, communicator: 0, tag: -1, destination: $0)])
                }
            }
            return (nil, received)
        } catch {
            shutdown(handEnd, Int32(SHUT_RDWR))   // unblock the writer
            return (error, received)
        }
    }

    static func expectTampered(_ attack: String, _ tamper: (inout [[[UInt8]]], SessionSeal) throws -> Void) throws {
        let (error, received) = try receive(tamper)
        #expect(error as? CollectiveError == .tampered(rank: 1, operation: "test"), "\(attack): \(String(describing: error))")
        let text = "\(error.map { "\($0)" } ?? "")"
        #expect(text.contains("from rank 1 failed authentication") && !text.contains("\n"), "\(attack): \(text)")
        let secondArrived = received[1] == payloads[1]
        #expect(!secondArrived, "\(attack): the second frame arrived although the stream was tampered with")
    }

    @Test func honestRecordsArriveWhole() throws {
        let (error, received) = try Self.receive { _, _ in }
        #expect(error == nil)
        let whole = received == Self.payloads
        #expect(whole)
    }

    @Test func aFlippedByteEndsTheTransferNamingTheRank() throws {
        try Self.expectTampered("flip") { frames, _ in frames[0][2][100] ^= 1 }
        try Self.expectTampered("flip in a header") { frames, _ in frames[1][0][20] ^= 0x80 }
    }

    @Test func aReplayedRecordEndsTheTransferNamingTheRank() throws {
        try Self.expectTampered("replay of a frame") { frames, _ in frames[1] = frames[0] }
        try Self.expectTampered("replay of a record") { frames, _ in frames[0][2] = frames[0][1] }
    }

    @Test func aReorderedOrDroppedRecordEndsTheTransferNamingTheRank() throws {
        try Self.expectTampered("reorder") { frames, _ in frames[0].swapAt(1, 2) }
        try Self.expectTampered("drop") { frames, _ in frames[0].remove(at: 1) }
    }

    @Test func anInjectedRecordEndsTheTransferNamingTheRank() throws {
        // Sealed under another session's key, or under this one's out of turn.
        let stranger = try Self.seals().initiator
        try Self.expectTampered("inject a stranger's frame") { frames, _ in frames.insert(try Self.records(stranger, payload: [1, 2, 3, 4]), at: 1) }
        try Self.expectTampered("inject in clear") { frames, _ in frames.insert([FrameHeader(tag: -1, communicator: 0, length: 4).bytes + [0, 0, 0, 0]], at: 1) }
    }

    /// Sealing moves the same bytes: allreduce results are bitwise those of the unsealed mesh,
    /// over sockets and over the same-host memory path, and every connection is sealed (`on`),
    /// none (`off`), or none over loopback (`auto`).
    @Test(arguments: [2, 3], [false, true])
    func sealedAndUnsealedAllReduceGiveBitwiseIdenticalResults(ranks: Int, sameHostMemory: Bool) throws {
        var bits: [TCPSealMode: [[UInt32]]] = [:]
        for mode in TCPSealMode.allCases {
            let results = runTCP(size: ranks, port: freePort(), sameHostMemory: sameHostMemory, seal: { _ in mode }) { comm -> ([UInt32], Int) in
                var generator = SplitMix(seed: UInt64(comm.rank) + 11)
                var data = (0..<1_000_003).map { _ in Float(generator.next() % 2_000_001) * 1e-3 * Float(1 << Int(generator.next() % 20)) - 1000 }
                try comm.allReduce(&data, op: .sum)
                var sum = [Float(comm.rank)]
                try comm.allReduce(&sum, op: .sum)   // a small frame after the large one
                return (data.map(\.bitPattern) + sum.map(\.bitPattern), comm.sealedPeers)
            }
            for (rank, result) in results.enumerated() {
                let (values, sealed) = try result.get()
                #expect(sealed == (mode == .on ? ranks - 1 : 0), "rank \(rank), \(mode)")
                bits[mode, default: []].append(values)
            }
        }
        #expect(bits[.on] == bits[.off], "sealed and unsealed allreduce differ")
        #expect(bits[.auto] == bits[.off])
        #expect(Set(bits[.on]!.map { $0 }).count == 1, "the ranks disagree")
    }

    @Test(arguments: [2, 3], [false, true])
    func conformanceOverSealedConnections(ranks: Int, sameHostMemory: Bool) throws {
        let results = runTCP(size: ranks, port: freePort(), sameHostMemory: sameHostMemory, seal: { _ in .on }) { comm in
            (try CommunicatorConformance.run(comm), comm.sealedPeers)
        }
        for result in results {
            let (outcomes, sealed) = try result.get()
            #expect(sealed == ranks - 1)
            for outcome in outcomes { #expect(outcome.passed, "\(outcome)") }
        }
    }

    @Test func ranksWithDifferentSealModesAreRefusedNamingBoth() throws {
        let results = runTCP(size: 2, port: freePort(), timeout: 3, seal: { $0 == 1 ? .on : .off }) { comm in comm.size }
        let rank1 = "\(results[1])"
        #expect(rank1.contains("rank 0 runs with parallel.tcp_seal=off and rank 1 with on"), "\(rank1)")
        #expect("\(results[0])".contains("rendezvous"), "rank 0 waits for rank 1 and times out: \(results[0])")
    }

    @Test func aBadModeIsOneLineNamingTheKeyAndTheChoices() throws {
        #expect(throws: CollectiveError.invalidArgument("parallel.tcp_seal=yes is not one of on, off, auto")) {
            try TCPSealMode("yes", key: "parallel.tcp_seal")
        }
        #expect(try TCPSealMode("auto", key: "k") == .auto)
    }

    /// Every rank names the tampering, not only the one that saw it: rank 0 tells the others
    /// (its abort notice, a sealed record like any other), and rank 1, reading that notice
    /// before rank 0's socket closes, reports the tampered frame from rank 1, not "rank 1 was
    /// lost" or "rank 0 was lost".
    @Test func theRankAcrossATamperedLinkAlsoNamesTheTampering() throws {
        var link: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &link) == 0)
        defer { close(link[1]) }
        let (hand, mine) = try Self.seals()
        let rank0 = TCPMesh(worldRank: 0, worldSize: 2, sockets: [-1, link[0]], timeoutSeconds: 5, seals: [nil, mine])
        var records = try Self.records(hand, payload: [UInt8](repeating: 7, count: 1000))
        records[1][10] ^= 1   // on the way from rank 1
        try Socket.writeAll(link[1], records.flatMap { $0 }, deadline: Date(timeIntervalSinceNow: 5))
        var into = [UInt8](repeating: 0, count: 1000)
        #expect(throws: CollectiveError.tampered(rank: 1, operation: "test")) {
            try into.withUnsafeMutableBytes { try rank0.transfer("test", sends: [], receives: [ExpectedFrame(peer: 1, communicator: 0, tag: -1, destination: $0)]) }
        }
        var notice: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 1 << 16)
        while case let n = recv(link[1], &buffer, buffer.count, Int32(MSG_DONTWAIT)), n > 0 { notice += buffer[..<n] }
        #expect(!notice.isEmpty, "rank 0 told rank 1 nothing")
        // Rank 1 reads what rank 0 sent, then rank 0's socket closes (its process has exited).
        var pair: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        try Socket.writeAll(pair[1], notice, deadline: Date(timeIntervalSinceNow: 5))
        close(pair[1])
        let rank1 = TCPMesh(worldRank: 1, worldSize: 2, sockets: [pair[0], -1], timeoutSeconds: 5, seals: [hand, nil])
        do {
            try into.withUnsafeMutableBytes { try rank1.transfer("test", sends: [], receives: [ExpectedFrame(peer: 0, communicator: 0, tag: -1, destination: $0)]) }
            Issue.record("rank 1 completed a receive from rank 0, which had stopped")
        } catch {
            #expect(error as? CollectiveError == .tampered(rank: 1, operation: "test"), "\(error)")
            #expect("\(error)".contains("a sealed frame from rank 1 failed authentication"), "\(error)")
        }
    }

    /// Clear mode: a header whose length is over its limit (forged or corrupt; clear headers are
    /// not authenticated) is refused in one line naming the rank, before anything of that size
    /// is allocated (a 2^62-byte spill used to be attempted).
    @Test func anOversizedClearHeaderIsRefusedNamingTheRank() throws {
        for (tag, length) in [(Int64(-1), UInt64(1) << 62), (TCPMesh.abortTag, UInt64(1) << 20)] {
            var fds: [Int32] = [0, 0]
            precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
            defer { close(fds[1]) }
            let mesh = TCPMesh(worldRank: 0, worldSize: 2, sockets: [-1, fds[0]], timeoutSeconds: 5)
            try Socket.writeAll(fds[1], FrameHeader(tag: tag, communicator: 0, length: length).bytes, deadline: Date(timeIntervalSinceNow: 5))
            var destination = [UInt8](repeating: 0, count: 16)
            do {
                try destination.withUnsafeMutableBytes {   // waits for another tag: the header's frame would be spilled
                    try mesh.transfer("test", sends: [], receives: [ExpectedFrame(peer: 1, communicator: 0, tag: -2, destination: $0)])
                }
                Issue.record("accepted a header announcing \(length) B")
            } catch {
                let text = "\(error)"
                #expect(text.contains("rank 1 sent a frame header announcing \(length) B") && !text.contains("\n"), "\(text)")
            }
        }
    }
}

/// A small deterministic generator (splitmix64) for the test's values.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
