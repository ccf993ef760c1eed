import Collectives
import Foundation
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// Whether the training mesh's connections are sealed (`parallel.tcp_seal`, `--tcp-seal`):
/// after the job-token handshake each connection derives one key per direction and every
/// record (frame header, each `TCPMesh.sealChunkBytes` of payload, acknowledgement) is
/// AES-256-GCM under a counter nonce (`SessionSeal`). A record that fails to open ends
/// the job naming the rank it came from.
///
/// - `on`: every connection.
/// - `off`: none (the token still guards who joins; the traffic is in clear).
/// - `auto` (the default): connections that leave the host; a connection over loopback, or
///   between two sockets of one address, never reaches a network and stays in clear.
///
/// Payloads that same-host ranks read from each other's memory (`SameHostMemory`) never cross a
/// network or a socket and are not sealed in any mode; their headers and acknowledgements are,
/// when the connection is.
///
/// Every rank of a job must use the same mode: it is part of the identity the handshake
/// authenticates, and a mismatch is refused naming both.
public enum TCPSealMode: String, CaseIterable, Sendable {
    case on, off, auto

    /// Auto, as measured (cluster/README.md, `parallel.tcp_seal`): with AES-256-GCM, sealing a
    /// 16 MiB allreduce between two network namespaces over a veth link limited to 10 Gbit/s
    /// costs nothing measurable (0.98-1.07x of clear), within issue 20's 10% for a default
    /// across hosts; on an unlimited veth link, which runs at memory speed, 0.77-0.92x.
    /// `ParallelSection.tcpSeal` (Training) holds the same default.
    public static let `default`: TCPSealMode = .auto

    /// The mode `text` names; anything else is one line naming `key` and the choices.
    public init(_ text: String, key: String) throws {
        guard let mode = TCPSealMode(rawValue: text) else {
            throw CollectiveError.invalidArgument("\(key)=\(text) is not one of \(Self.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = mode
    }

    /// Whether the connection on `fd` is sealed in this mode. Both ends reach the same answer:
    /// the test (loopback, or the same address at both ends) is symmetric.
    func seals(_ fd: Int32) -> Bool {
        switch self {
        case .on: return true
        case .off: return false
        case .auto: return !Self.staysOnHost(fd)
        }
    }

    /// True when the peer of `fd` is a loopback address or this end's own address: the kernel
    /// routes such a connection through `lo`, and a packet from a network claiming a loopback
    /// source is dropped as a martian.
    static func staysOnHost(_ fd: Int32) -> Bool {
        func address(_ get: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> in_addr_t? {
            var address = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let status = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { get(fd, $0, &length) } }
            return status == 0 && address.sin_family == sa_family_t(AF_INET) ? address.sin_addr.s_addr : nil
        }
        guard let local = address({ getsockname($0, $1, $2) }), let peer = address({ getpeername($0, $1, $2) }) else { return false }
        return UInt32(bigEndian: peer) >> 24 == 127 || peer == local
    }
}
