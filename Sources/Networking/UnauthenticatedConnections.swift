import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Connections still in their handshake, oldest first, at most `capacity`: admitting one more
/// shuts the oldest down (its handshake then fails at once), so strangers that connect and stay
/// silent can hold neither file descriptors nor threads for long, and the newest connection (an
/// honest client that proves itself in milliseconds) is the last to go. Each handshake runs on
/// its own thread with a deadline for the whole exchange (`handshakeSeconds`), so none waits
/// for another. Thread-safe.
public final class UnauthenticatedConnections: @unchecked Sendable {
    /// Handshakes at once; a stranger cannot make us hold more.
    public let capacity: Int
    private let lock = NSLock()
    private var pending: [(ticket: Int, fd: Int32, peer: String)] = []
    private var nextTicket = 0

    /// Default cap: well above the ranks that join a rendezvous at once, far below the file
    /// descriptors a process has (1024 by default).
    public static let defaultCapacity = 64
    /// Seconds a whole handshake may take (greeting, proofs, verdict): three round trips and
    /// two HMACs take milliseconds even across a data centre.
    public static let handshakeSeconds = 5.0

    public init(capacity: Int = UnauthenticatedConnections.defaultCapacity) { self.capacity = max(1, capacity) }

    /// Registers `fd` as handshaking. Over capacity, the oldest pending connection is shut down
    /// (not closed: its own thread closes it) and its peer returned, for a log line.
    public func admit(_ fd: Int32, peer: String) -> (ticket: Int, evicted: String?) {
        lock.lock()
        defer { lock.unlock() }
        var evicted: String?
        if pending.count >= capacity {
            let oldest = pending.removeFirst()
            shutdown(oldest.fd, Int32(SHUT_RDWR))
            evicted = oldest.peer
        }
        nextTicket += 1
        pending.append((nextTicket, fd, peer))
        return (nextTicket, evicted)
    }

    /// Shuts the oldest pending connection down (accept failed for want of file descriptors:
    /// a stranger's are freed first, never an authenticated client's); its peer, or nil when none.
    @discardableResult
    public func dropOldest() -> String? {
        lock.lock()
        defer { lock.unlock() }
        guard !pending.isEmpty else { return nil }
        let oldest = pending.removeFirst()
        shutdown(oldest.fd, Int32(SHUT_RDWR))
        return oldest.peer
    }

    /// The handshake of `ticket` ended (either way). Call before closing its descriptor, so an
    /// eviction can never shut down a descriptor number that was reused.
    public func settle(_ ticket: Int) {
        lock.lock()
        pending.removeAll { $0.ticket == ticket }
        lock.unlock()
    }

    public var count: Int { lock.lock(); defer { lock.unlock() }; return pending.count }

    /// Runs `handshake` for `fd` on a new thread, admitted here; `done` gets its result (on that
    /// thread) after the connection was settled. On a failure the caller's `done` closes `fd`.
    public func handshake<T>(_ fd: Int32, peer: String, name: String, log: @escaping (String) -> Void,
                             _ handshake: @escaping () throws -> T, done: @escaping (Result<T, Error>) -> Void) {
        let (ticket, evicted) = admit(fd, peer: peer)
        if let evicted { log("dropped the connection from \(evicted): \(capacity) connections were handshaking and it was the oldest") }
        let thread = Thread { [self] in
            let result = Result { try handshake() }
            settle(ticket)
            done(result)
        }
        thread.name = name
        thread.start()
    }
}
