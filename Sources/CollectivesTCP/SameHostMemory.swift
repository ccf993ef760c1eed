import Collectives
import Foundation
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// Ranks on one machine move collective payloads without pushing them through the loopback
/// stack: the sender puts the payload's address in the frame header, the receiver copies it
/// straight out of the sender's memory with Linux cross-memory attach (`process_vm_readv`,
/// one copy instead of the two a socket costs) and acknowledges, and only then does the
/// sender's operation complete. The socket still carries every header, so ordering, deadlines
/// and loss detection are the socket path's.
///
/// It is negotiated once per connection: each rank tells each peer its host identity (boot id,
/// host name, pid namespace), its process id and a probe word; a peer on the same host reads
/// the probe from the other process and answers whether that worked. Different hosts, a
/// kernel or container that forbids the read, or `TESSERA_TCP_SAME_HOST=socket` leave that
/// pair on the socket path.
enum SameHostMemory {
    /// What `TESSERA_TCP_SAME_HOST` may say.
    static let variable = "TESSERA_TCP_SAME_HOST"
    static let choices = ["memory", "socket"]

    /// This machine and process namespace: equal strings mean process ids mean the same process.
    static func hostIdentity() -> String {
        func text(_ path: String) -> String {
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        var name = utsname()
        uname(&name)
        let node = withUnsafeBytes(of: name.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        var link = [CChar](repeating: 0, count: 256)
        let count = readlink("/proc/self/ns/pid", &link, link.count - 1)
        let namespace = count > 0 ? String(decoding: link.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        return "\(text("/proc/sys/kernel/random/boot_id"))/\(node)/\(namespace)"
    }

    private typealias ReadFunction = @convention(c) (pid_t, UnsafePointer<iovec>?, UInt, UnsafePointer<iovec>?, UInt, UInt) -> Int
    /// `process_vm_readv`, looked up at run time (Swift's Glibc module does not declare it).
    private static let readFunction: ReadFunction? = dlsym(nil, "process_vm_readv").map { unsafeBitCast($0, to: ReadFunction.self) }

    /// Copies `destination.count` bytes from `address` in process `pid`; nil on success, else
    /// the errno of the failed read.
    static func read(pid: Int32, address: UInt64, into destination: UnsafeMutableRawBufferPointer) -> Int32? {
        guard let readFunction else { return ENOSYS }
        var done = 0
        while done < destination.count {
            var local = iovec(iov_base: destination.baseAddress! + done, iov_len: destination.count - done)
            var remote = iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(address) + UInt(done)), iov_len: destination.count - done)
            let n = readFunction(pid, &local, 1, &remote, 1, 0)
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if n == 0 { return EFAULT }
            done += n
        }
        return nil
    }

    /// One rank's offer: whom to read, where, and what the probe word must hold.
    private struct Offer {
        static let size = 24 + 128
        var pid: Int32            // 0: this rank does not offer its memory
        var probeAddress: UInt64
        var probeValue: UInt64
        var host: String

        var bytes: [UInt8] {
            var out = [UInt8](repeating: 0, count: Self.size)
            out.withUnsafeMutableBytes {
                $0.storeBytes(of: Int64(pid).littleEndian, toByteOffset: 0, as: Int64.self)
                $0.storeBytes(of: probeAddress.littleEndian, toByteOffset: 8, as: UInt64.self)
                $0.storeBytes(of: probeValue.littleEndian, toByteOffset: 16, as: UInt64.self)
            }
            let name = Array(host.utf8.prefix(Self.size - 24))
            out.replaceSubrange(24..<(24 + name.count), with: name)
            return out
        }

        init(pid: Int32, probeAddress: UInt64, probeValue: UInt64, host: String) {
            self.pid = pid
            self.probeAddress = probeAddress
            self.probeValue = probeValue
            self.host = host
        }

        init(_ raw: [UInt8]) {
            pid = raw.withUnsafeBytes { Int32(truncatingIfNeeded: Int64(littleEndian: $0.loadUnaligned(fromByteOffset: 0, as: Int64.self))) }
            probeAddress = raw.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
            probeValue = raw.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self)) }
            host = String(decoding: raw[24...].prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// The negotiated pairs: `pids[peer]` is the peer's process id when this rank reads that
    /// peer's memory; `sendsByAddress[peer]` when that peer reads this rank's.
    struct Pairs {
        var pids: [Int32?]
        var sendsByAddress: [Bool]
        var count: Int { pids.compactMap { $0 }.count }
    }

    /// Runs the two-round exchange over the freshly connected sockets (blocking, within `deadline`).
    /// `pid` is what this rank advertises (tests pass one that cannot be read).
    /// On a sealed connection (`seals[peer]`) the messages are sealed records like the mesh's
    /// (so no one on the path can make a rank read another process's memory).
    static func negotiate(sockets: [Int32], seals: [SessionSeal?]? = nil, worldRank: Int, enabled: Bool, deadline: Date,
                          pid: Int32 = getpid()) throws -> Pairs {
        let seals = seals ?? [SessionSeal?](repeating: nil, count: sockets.count)
        func transmit(_ peer: Int, _ bytes: [UInt8]) throws {
            try Socket.writeAll(sockets[peer], seals[peer].map { try $0.seal(bytes) } ?? bytes, deadline: deadline)
        }
        func receive(_ peer: Int, _ count: Int) throws -> [UInt8] {
            guard let seal = seals[peer] else { return try Socket.readExactly(sockets[peer], count, deadline: deadline) }
            guard let plain = seal.open(try Socket.readExactly(sockets[peer], count + SessionSeal.tagBytes, deadline: deadline)) else {
                throw CollectiveError.tampered(rank: peer, operation: "the same-host negotiation")
            }
            return plain
        }
        let peers = sockets.indices.filter { sockets[$0] >= 0 }
        var pairs = Pairs(pids: [Int32?](repeating: nil, count: sockets.count), sendsByAddress: [Bool](repeating: false, count: sockets.count))
        guard !peers.isEmpty else { return pairs }
        // The probe word lives until every peer has answered (the end of this function).
        let probe = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        defer { probe.deallocate() }
        probe.pointee = UInt64.random(in: 1...UInt64.max)
        let host = hostIdentity()
        let offer = Offer(pid: enabled ? pid : 0, probeAddress: UInt64(UInt(bitPattern: probe)), probeValue: probe.pointee, host: host)
        for peer in peers { try transmit(peer, offer.bytes) }
        var refused: [String] = []
        for peer in peers {
            let theirs = Offer(try receive(peer, Offer.size))
            guard enabled, theirs.pid != 0, theirs.host == host else { continue }
            var word: UInt64 = 0
            let failure = withUnsafeMutableBytes(of: &word) { read(pid: theirs.pid, address: theirs.probeAddress, into: $0) }
            if let failure {
                refused.append("rank \(peer) (\(Socket.errorText(failure)))")
            } else if word == theirs.probeValue {
                pairs.pids[peer] = theirs.pid
            }
        }
        for peer in peers { try transmit(peer, [pairs.pids[peer] == nil ? 0 : 1]) }
        for peer in peers { pairs.sendsByAddress[peer] = try receive(peer, 1) == [1] }
        if !refused.isEmpty {
            Rendezvous.log("rank \(worldRank) may not read the memory of same-host \(refused.joined(separator: ", ")); that traffic goes through sockets, which is slower")
        }
        return pairs
    }
}
