/// Why a socket operation failed (`Socket`); each case names the address or call. The TCP
/// collectives report these as `CollectiveError.backend`, the checkpoint service as its own errors.
public enum NetworkError: Error, Equatable, CustomStringConvertible {
    case unresolvable(host: String, reason: String)
    /// A named interface with no IPv4 address here; `available`: the interfaces that have one.
    case noInterfaceAddress(name: String, available: [String])
    case cannotListen(address: String, reason: String)
    /// Nothing accepted a connection to `address` (`what` is waited for) before the deadline.
    case unreachable(what: String, address: String, reason: String)
    /// A blocking read or write passed its deadline.
    case timedOut(doing: String)
    /// The other end closed the connection.
    case closed(doing: String)
    /// A system call failed.
    case system(call: String, reason: String)

    public var description: String {
        switch self {
        case let .unresolvable(host, reason): return "cannot resolve host '\(host)': \(reason)"
        case let .noInterfaceAddress(name, available):
            return "network interface '\(name)' has no IPv4 address here; interfaces with one: \(available.joined(separator: ", "))"
        case let .cannotListen(address, reason): return "cannot listen on \(address): \(reason)"
        case let .unreachable(what, address, reason):
            return "could not reach \(what) at \(address) (\(reason)); is it running, and is the address right?"
        case let .timedOut(doing): return "\(doing) timed out"
        case let .closed(doing): return "connection closed during \(doing)"
        case let .system(call, reason): return "\(call) failed: \(reason)"
        }
    }
}
