import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Thin, throwing wrappers over POSIX sockets (IPv4 stream sockets only), shared by the TCP
/// collectives and the checkpoint service; errors are `NetworkError` naming the address.
public enum Socket {
    public static func errorText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

    /// Resolves a host name or dotted address to an IPv4 address.
    public static func resolve(_ host: String, port: UInt16) throws -> sockaddr_in {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let first = result else {
            throw NetworkError.unresolvable(host: host, reason: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(result) }
        return first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
    }

    /// The IPv4 address of a named network interface (`eth0`, `veth-a`).
    public static func address(ofInterface name: String) throws -> String {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { throw NetworkError.system(call: "getifaddrs", reason: errorText()) }
        defer { freeifaddrs(list) }
        var names: [String] = []
        var cursor = list
        while let entry = cursor {
            let entryName = String(cString: entry.pointee.ifa_name)
            if let addr = entry.pointee.ifa_addr, addr.pointee.sa_family == UInt16(AF_INET) {
                names.append(entryName)
                if entryName == name {
                    let sin = addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
                    return describe(sin).host
                }
            }
            cursor = entry.pointee.ifa_next
        }
        throw NetworkError.noInterfaceAddress(name: name, available: Set(names).sorted())
    }

    public static func describe(_ address: sockaddr_in) -> (host: String, port: UInt16) {
        var addr = address.sin_addr
        var buffer = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        inet_ntop(AF_INET, &addr, &buffer, socklen_t(INET_ADDRSTRLEN))
        return (String(cString: buffer), UInt16(bigEndian: address.sin_port))
    }

    static func newStream() throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw NetworkError.system(call: "socket()", reason: errorText()) }
        return fd
    }

    /// A listening socket on host:port (port 0 picks a free one). Returns fd and the bound port.
    public static func listen(host: String, port: UInt16) throws -> (fd: Int32, port: UInt16) {
        let fd = try newStream()
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = try resolve(host, port: port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let text = errorText()
            close(fd)
            throw NetworkError.cannotListen(address: "\(host):\(port)", reason: text)
        }
        guard Glibc.listen(fd, 128) == 0 else { close(fd); throw NetworkError.system(call: "listen()", reason: errorText()) }
        return (fd, localAddress(fd).port)
    }

    /// A port on `host` that nothing listens on right now (the kernel picks it).
    public static func freePort(host: String) throws -> UInt16 {
        let (fd, port) = try listen(host: host, port: 0)
        close(fd)
        return port
    }

    public static func localAddress(_ fd: Int32) -> (host: String, port: UInt16) {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return describe(address)
    }

    /// Connects, retrying until `deadline` (the peer may not be listening yet).
    public static func connect(host: String, port: UInt16, deadline: Date, waitingFor: String) throws -> Int32 {
        var address = try resolve(host, port: port)
        var lastError = ""
        while true {
            let fd = try newStream()
            let status = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if status == 0 { tune(fd); return fd }
            lastError = errorText()
            close(fd)
            if Date() > deadline {
                throw NetworkError.unreachable(what: waitingFor, address: "\(host):\(port)", reason: lastError)
            }
            usleep(50_000)
        }
    }

    /// Accepts one connection, waiting at most until `deadline`; nil on timeout.
    public static func accept(_ listener: Int32, deadline: Date) throws -> (fd: Int32, peer: String)? {
        var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        let wait = max(0, Int32(deadline.timeIntervalSinceNow * 1000))
        let ready = poll(&pfd, 1, wait)
        if ready == 0 { return nil }
        guard ready > 0 else {
            if errno == EINTR { return try accept(listener, deadline: deadline) }
            throw NetworkError.system(call: "poll() on listener", reason: errorText())
        }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let fd = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(listener, $0, &length) }
        }
        guard fd >= 0 else { throw NetworkError.system(call: "accept()", reason: errorText()) }
        tune(fd)
        let peer = describe(address)
        return (fd, "\(peer.host):\(peer.port)")
    }

    /// Socket buffer size asked for: large enough that a ring step's chunk streams without a
    /// wake-up per few kilobytes (the kernel caps it at net.core.wmem_max / rmem_max).
    static let bufferBytes: Int32 = 4 << 20

    /// Low latency and large buffers for bulk transfers.
    public static func tune(_ fd: Int32) {
        var yes: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &yes, socklen_t(MemoryLayout<Int32>.size))
        var size = bufferBytes
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    public static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    /// Blocking write of all bytes with a deadline (used during the handshake only).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], deadline: Date) throws {
        var offset = 0
        while offset < bytes.count {
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&pfd, 1, max(0, Int32(deadline.timeIntervalSinceNow * 1000))) > 0 else {
                throw NetworkError.timedOut(doing: "handshake write")
            }
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw NetworkError.system(call: "handshake write", reason: errorText()) }
            offset += n
        }
    }

    /// Blocking read of exactly `count` bytes with a deadline (handshake only).
    public static func readExactly(_ fd: Int32, _ count: Int, deadline: Date) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, max(0, Int32(deadline.timeIntervalSinceNow * 1000))) > 0 else {
                throw NetworkError.timedOut(doing: "handshake read")
            }
            let n = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, count - offset, 0) }
            guard n > 0 else { throw NetworkError.closed(doing: "handshake") }
            offset += n
        }
        return bytes
    }
}
