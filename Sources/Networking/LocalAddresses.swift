import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// This machine's network addresses (every interface's, from getifaddrs) and host name: to tell
/// whether a hostfile entry names this machine.
public struct LocalAddresses: Sendable {
    /// Numeric addresses, IPv4 then IPv6 (without an interface scope).
    public var addresses: [String]
    public var hostName: String

    public init(addresses: [String], hostName: String) {
        self.addresses = addresses
        self.hostName = hostName
    }

    /// The addresses of this machine's interfaces now.
    public static func current() -> LocalAddresses {
        var list: UnsafeMutablePointer<ifaddrs>?
        var v4: [String] = [], v6: [String] = []
        if getifaddrs(&list) == 0 {
            var entry = list
            while let current = entry {
                if let address = current.pointee.ifa_addr, let text = numeric(address) {
                    if address.pointee.sa_family == sa_family_t(AF_INET) { if !v4.contains(text) { v4.append(text) } }
                    else if !v6.contains(text) { v6.append(text) }
                }
                entry = current.pointee.ifa_next
            }
            freeifaddrs(list)
        }
        var name = [CChar](repeating: 0, count: 256)
        let hostName = gethostname(&name, name.count - 1) == 0 ? String(cString: name) : ""
        return LocalAddresses(addresses: v4 + v6, hostName: hostName)
    }

    /// Whether `host` (an address or a name) is this machine: one of its addresses, its host
    /// name, or a name that resolves to one of its addresses.
    public func contains(_ host: String) -> Bool {
        let host = host.trimmingCharacters(in: .whitespaces)
        if addresses.contains(Self.withoutScope(host)) { return true }
        if !hostName.isEmpty, host == hostName { return true }
        return Self.resolve(host).contains { addresses.contains($0) }
    }

    /// The numeric addresses `host` resolves to (itself when it is an address; none when it
    /// does not resolve).
    public static func resolve(_ host: String) -> [String] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var results: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &results) == 0 else { return [] }
        defer { freeaddrinfo(results) }
        var found: [String] = []
        var entry = results
        while let current = entry {
            if let address = current.pointee.ai_addr, let text = numeric(address), !found.contains(text) { found.append(text) }
            entry = current.pointee.ai_next
        }
        return found
    }

    /// An IPv4 or IPv6 socket address as text (nil for other families).
    static func numeric(_ address: UnsafePointer<sockaddr>) -> String? {
        let family = Int32(address.pointee.sa_family)
        guard family == AF_INET || family == AF_INET6 else { return nil }
        let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
        var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        guard getnameinfo(address, length, &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST) == 0 else { return nil }
        return withoutScope(String(cString: text))
    }

    /// `fe80::1%eth0` → `fe80::1`.
    static func withoutScope(_ address: String) -> String {
        address.split(separator: "%", maxSplits: 1).first.map(String.init) ?? address
    }
}
