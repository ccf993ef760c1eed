import Collectives
import Foundation
import Networking
#if canImport(Glibc)
import Glibc
#endif

/// How a TCP rank finds the others: everything `tessera launch` (or the user) puts in the
/// environment.
public struct TCPJobSpec: Equatable, Sendable {
    public var rank: Int
    public var worldSize: Int
    public var masterAddress: String
    public var masterPort: UInt16
    public var token: String
    /// Network interface to bind to and advertise (`TESSERA_SOCKET_IFNAME`), or nil for the one
    /// that routes to rank 0.
    public var interface: String?
    /// Whether ranks on this host may read each other's payloads straight from memory
    /// (`TESSERA_TCP_SAME_HOST=memory`, the default) or must use the sockets (`socket`).
    public var sameHostMemory: Bool
    /// Which mesh connections are sealed (`parallel.tcp_seal`); every rank must say the same.
    public var seal: TCPSealMode

    /// A free port on `host` for a single-node job's rendezvous.
    public static func freePort(host: String = "127.0.0.1") throws -> UInt16 { try Rendezvous.collective { try Socket.freePort(host: host) } }

    public static let variables = ["TESSERA_RANK", "TESSERA_WORLD_SIZE", "TESSERA_MASTER_ADDR", "TESSERA_MASTER_PORT", "TESSERA_JOB_TOKEN"]

    public init(rank: Int, worldSize: Int, masterAddress: String, masterPort: UInt16, token: String, interface: String? = nil,
                sameHostMemory: Bool = true, seal: TCPSealMode = .default) {
        self.rank = rank
        self.worldSize = worldSize
        self.masterAddress = masterAddress
        self.masterPort = masterPort
        self.token = token
        self.interface = interface
        self.sameHostMemory = sameHostMemory
        self.seal = seal
    }

    /// Reads the TESSERA_* variables; a missing or malformed one is an error naming it. The
    /// seal mode is the caller's (a config key, not the environment).
    public init(environment env: [String: String], seal: TCPSealMode = .default) throws {
        self.seal = seal
        func value(_ key: String) throws -> String {
            guard let v = env[key], !v.isEmpty else {
                throw CollectiveError.invalidArgument(
                    "TCP backend: \(key) is not set; start ranks with `tessera launch --nproc N -- ...`, or set all of \(Self.variables.joined(separator: ", "))")
            }
            return v
        }
        func integer(_ key: String) throws -> Int {
            let text = try value(key)
            guard let v = Int(text), v >= 0 else { throw CollectiveError.invalidArgument("TCP backend: \(key)=\(text) is not a non-negative whole number") }
            return v
        }
        rank = try integer("TESSERA_RANK")
        worldSize = try integer("TESSERA_WORLD_SIZE")
        masterAddress = try value("TESSERA_MASTER_ADDR")
        let port = try integer("TESSERA_MASTER_PORT")
        guard (1...65535).contains(port) else { throw CollectiveError.invalidArgument("TCP backend: TESSERA_MASTER_PORT=\(port) is not a port (1-65535)") }
        masterPort = UInt16(port)
        token = try value("TESSERA_JOB_TOKEN")
        do { try JobToken.validate(token, source: "TESSERA_JOB_TOKEN") } catch {
            throw CollectiveError.invalidArgument("TCP backend: \(error)")
        }
        interface = env["TESSERA_SOCKET_IFNAME"].flatMap { $0.isEmpty ? nil : $0 }
        let sameHost = env[SameHostMemory.variable].flatMap { $0.isEmpty ? nil : $0 } ?? "memory"
        guard SameHostMemory.choices.contains(sameHost) else {
            throw CollectiveError.invalidArgument("TCP backend: \(SameHostMemory.variable)=\(sameHost) is not one of \(SameHostMemory.choices.joined(separator: ", "))")
        }
        sameHostMemory = sameHost == "memory"
        guard worldSize >= 1, rank < worldSize else {
            throw CollectiveError.invalidArgument("TCP backend: TESSERA_RANK=\(rank) must be below TESSERA_WORLD_SIZE=\(worldSize)")
        }
    }
}

/// What a rank says about itself when it connects: rank, world size, and the address where it
/// accepts mesh connections. It travels as the identity of the job-token handshake
/// (`JobHandshake`), which authenticates it; the token itself never travels.
struct Hello: Equatable {
    var rank: Int
    var worldSize: Int
    var host: String
    var port: UInt16
    /// The rank's `parallel.tcp_seal`, authenticated with the rest (no one on the path can turn it off).
    var seal: TCPSealMode

    var identity: String { "rank \(rank) of \(worldSize) at \(host) \(port) seal \(seal.rawValue)" }

    /// How the accepting rank names itself in the handshake.
    static func acceptor(rank: Int, worldSize: Int, seal: TCPSealMode) -> String { "rank \(rank) of \(worldSize) seal \(seal.rawValue)" }

    /// Parses an identity; nil when it is not a rank's (a checkpoint client, say).
    init?(identity: String) {
        let parts = identity.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 9, parts[0] == "rank", parts[2] == "of", parts[4] == "at", parts[7] == "seal",
              let rank = Int(parts[1]), let size = Int(parts[3]), let port = UInt16(parts[6]),
              let seal = TCPSealMode(rawValue: parts[8]) else { return nil }
        self.init(rank: rank, worldSize: size, host: parts[5], port: port, seal: seal)
    }

    init(rank: Int, worldSize: Int, host: String, port: UInt16, seal: TCPSealMode = .default) {
        self.rank = rank; self.worldSize = worldSize; self.host = host; self.port = port; self.seal = seal
    }

    /// The error for a peer whose handshake identity shows another seal mode than ours.
    static func sealMismatch(peer: Int, theirs: String, rank: Int, ours: TCPSealMode) -> CollectiveError {
        .invalidArgument("rank \(peer) runs with parallel.tcp_seal=\(theirs) and rank \(rank) with \(ours.rawValue): every rank of a job must use the same (set it in the config every rank reads, or give each the same --tcp-seal)")
    }

    /// The seal mode an acceptor's identity (`acceptor(...)`) claims, if it is one.
    static func acceptorSeal(_ identity: String) -> String? {
        let parts = identity.split(separator: " ")
        return parts.count == 6 && parts[4] == "seal" ? String(parts[5]) : nil
    }
}

/// The mesh's connections once the rendezvous is done: a socket per world rank (-1 for this
/// one) and, for the sealed ones, the connection's `SessionSeal`.
struct MeshLinks {
    var sockets: [Int32]
    var seals: [SessionSeal?]

    init(worldSize: Int) {
        sockets = [Int32](repeating: -1, count: worldSize)
        seals = [SessionSeal?](repeating: nil, count: worldSize)
    }

    /// Records the connection to `peer`, sealed when `mode` says so for this socket.
    mutating func join(_ peer: Int, _ fd: Int32, _ session: JobHandshake.Session, initiator: Bool, mode: TCPSealMode) {
        sockets[peer] = fd
        seals[peer] = mode.seals(fd) ? SessionSeal(session, initiator: initiator) : nil
    }
}

/// Builds the full mesh: every rank reports to rank 0, rank 0 sends back the table of
/// addresses, then each pair of other ranks connects (the higher rank dials the lower).
/// Connections that do not prove the job token (`JobHandshake`) are refused and logged, never joined.
enum Rendezvous {
    /// Bytes of one rank's line in the address table rank 0 sends (`HOST PORT`, the host taken
    /// from the rank's handshake identity, itself at most `JobHandshake.maxIdentityBytes`); the
    /// table is refused above `worldSize` times this.
    static let maxTableLineBytes = JobHandshake.maxIdentityBytes + 8
    static func log(_ message: String) {
        try? FileHandle.standardError.write(contentsOf: Data("tessera: tcp: \(message)\n".utf8))
    }

    /// `body`'s socket failures as the collectives' errors; a port that cannot be bound says
    /// which setting chooses it.
    static func collective<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as NetworkError {
            if case .cannotListen = error { throw CollectiveError.backend("\(error); choose another TESSERA_MASTER_PORT or interface") }
            throw CollectiveError.backend("\(error)")
        }
    }

    static func connectAll(_ spec: TCPJobSpec, timeoutSeconds: Double) throws -> MeshLinks {
        var links = MeshLinks(worldSize: spec.worldSize)
        guard spec.worldSize > 1 else { return links }
        let deadline = Date(timeIntervalSinceNow: timeoutSeconds)
        if spec.rank == 0 {
            let bindHost = try spec.interface.map(Socket.address(ofInterface:)) ?? spec.masterAddress
            let listener = try Socket.listen(host: bindHost, port: spec.masterPort)
            defer { close(listener.fd) }
            var table = [String](repeating: "", count: spec.worldSize)
            table[0] = "\(bindHost) \(listener.port)"
            var accepted: [Int: (fd: Int32, session: JobHandshake.Session)] = [:]
            try acceptPeers(listener.fd, spec, expecting: Set(1..<spec.worldSize), deadline: deadline, timeoutSeconds: timeoutSeconds) { hello, fd, session in
                accepted[hello.rank] = (fd, session)
                table[hello.rank] = "\(hello.host) \(hello.port)"
            }
            let tableBytes = Array(table.joined(separator: "\n").utf8)
            var length = UInt32(tableBytes.count).littleEndian
            let message = withUnsafeBytes(of: &length) { Array($0) } + tableBytes
            for (rank, link) in accepted {
                try Socket.writeAll(link.fd, message, deadline: deadline)
                links.join(rank, link.fd, link.session, initiator: false, mode: spec.seal)
            }
            return links
        }

        // Ranks above 0: report to rank 0 from the interface that reaches it (or the named one).
        let master = try Socket.connect(host: spec.masterAddress, port: spec.masterPort, deadline: deadline, waitingFor: "rank 0")
        let host = try spec.interface.map(Socket.address(ofInterface:)) ?? Socket.localAddress(master).host
        let listener = try Socket.listen(host: host, port: 0)
        defer { close(listener.fd) }
        let hello = Hello(rank: spec.rank, worldSize: spec.worldSize, host: host, port: listener.port, seal: spec.seal)
        let masterAddress = "\(spec.masterAddress):\(spec.masterPort)"
        let masterSession = try handshake(master, spec, hello, peer: 0, address: masterAddress, deadline: deadline,
                                          otherwise: "; check TESSERA_MASTER_ADDR and TESSERA_MASTER_PORT")
        let head: [UInt8]
        do { head = try Socket.readExactly(master, 4, deadline: deadline) } catch {
            throw CollectiveError.backend("rank 0 at \(masterAddress) did not accept rank \(spec.rank) (a duplicate rank, a different world size, or not every rank started within \(Int(timeoutSeconds)) s)")
        }
        let length = Int(head[0]) | Int(head[1]) << 8 | Int(head[2]) << 16 | Int(head[3]) << 24
        guard length <= spec.worldSize * maxTableLineBytes else {
            throw CollectiveError.backend("rank 0 at \(masterAddress) sent an address table of \(length) bytes, over the \(maxTableLineBytes) bytes a rank's line may take")
        }
        let table = String(decoding: try Socket.readExactly(master, length, deadline: deadline), as: UTF8.self)
            .split(separator: "\n", omittingEmptySubsequences: false).map { $0.split(separator: " ").map(String.init) }
        guard table.count == spec.worldSize, table.dropFirst().allSatisfy({ $0.count == 2 && UInt16($0[1]) != nil }) else {
            throw CollectiveError.backend("rank 0 at \(masterAddress) sent an address table that is not \(spec.worldSize) lines of HOST PORT")
        }
        links.join(0, master, masterSession, initiator: true, mode: spec.seal)
        for peer in 1..<spec.rank {
            let fd = try Socket.connect(host: table[peer][0], port: UInt16(table[peer][1]) ?? 0, deadline: deadline, waitingFor: "rank \(peer)")
            let session = try handshake(fd, spec, hello, peer: peer, address: "\(table[peer][0]):\(table[peer][1])", deadline: deadline, otherwise: "")
            links.join(peer, fd, session, initiator: true, mode: spec.seal)
        }
        let higher = Set((spec.rank + 1)..<spec.worldSize)
        if !higher.isEmpty {
            try acceptPeers(listener.fd, spec, expecting: higher, deadline: deadline, timeoutSeconds: timeoutSeconds) { hello, fd, session in
                links.join(hello.rank, fd, session, initiator: false, mode: spec.seal)
            }
        }
        return links
    }

    /// The dialing side's handshake with rank `peer` at `address`: the session once the peer
    /// has proved the token and named itself as that rank with our seal mode.
    private static func handshake(_ fd: Int32, _ spec: TCPJobSpec, _ hello: Hello, peer: Int, address: String, deadline: Date,
                                  otherwise hint: String) throws -> JobHandshake.Session {
        do {
            let session = try JobHandshake(token: spec.token).initiate(identity: hello.identity, over: .socket(fd, deadline: deadline))
            if let theirs = Hello.acceptorSeal(session.peer), theirs != spec.seal.rawValue {
                throw Hello.sealMismatch(peer: peer, theirs: theirs, rank: spec.rank, ours: spec.seal)
            }
            guard session.peer == Hello.acceptor(rank: peer, worldSize: spec.worldSize, seal: spec.seal) else {
                throw CollectiveError.backend("\(address) answered as '\(session.peer)', not as rank \(peer) of this job\(hint)")
            }
            return session
        } catch let error as HandshakeError {
            throw CollectiveError.backend("rank \(peer) at \(address) did not accept rank \(spec.rank): \(error)")
        }
    }

    /// Accepts until every rank in `expecting` has joined with a valid handshake; refuses and
    /// logs others. Each connection's handshake runs on its own thread with a whole-exchange
    /// deadline, at most `UnauthenticatedConnections.defaultCapacity` at once (the oldest
    /// dropped first), so strangers that connect and stay silent delay no rank.
    static func acceptPeers(_ listener: Int32, _ spec: TCPJobSpec, expecting: Set<Int>, deadline: Date, timeoutSeconds: Double,
                            _ joined: (Hello, Int32, JobHandshake.Session) -> Void) throws {
        var missing = expecting
        let gate = UnauthenticatedConnections()
        let inbox = HandshakeInbox()
        defer { inbox.finish() }
        let identity = Hello.acceptor(rank: spec.rank, worldSize: spec.worldSize, seal: spec.seal)
        while !missing.isEmpty {
            for (fd, peer, session) in inbox.take() {
                let claimed = session.peer
                guard let hello = Hello(identity: claimed) else {
                    log("refused a connection from \(peer): '\(claimed)' knows the job token but is not a rank of this job")
                    close(fd); continue
                }
                guard hello.worldSize == spec.worldSize, missing.contains(hello.rank) else {
                    log("refused a connection from \(peer): rank \(hello.rank) of \(hello.worldSize) is not expected here (world size \(spec.worldSize), waiting for \(missing.sorted()))")
                    close(fd); continue
                }
                guard hello.seal == spec.seal else {   // the dialing rank reports it (it learns our mode from our identity)
                    log("refused rank \(hello.rank) from \(peer): \(Hello.sealMismatch(peer: hello.rank, theirs: hello.seal.rawValue, rank: spec.rank, ours: spec.seal))")
                    close(fd); continue
                }
                missing.remove(hello.rank)
                joined(hello, fd, session)
            }
            if missing.isEmpty { break }
            guard Date() < deadline else {
                throw CollectiveError.timeout(operation: "rendezvous on rank \(spec.rank)", waitingFor: missing.sorted(), seconds: timeoutSeconds)
            }
            guard let (fd, peer) = try Socket.accept(listener, deadline: min(deadline, Date(timeIntervalSinceNow: 0.05))) else { continue }
            let handshakeDeadline = min(deadline, Date(timeIntervalSinceNow: UnauthenticatedConnections.handshakeSeconds))
            gate.handshake(fd, peer: peer, name: "tessera-rendezvous-handshake", log: log, {
                try JobHandshake(token: spec.token).accept(identity: identity, over: .socket(fd, deadline: handshakeDeadline))
            }, done: { result in
                switch result {
                case .success(let session): inbox.put(fd, peer: peer, session: session)
                case .failure(let error): log("refused a connection from \(peer): \(error)"); close(fd)
                }
            })
        }
    }
}

/// Connections whose handshakes succeeded, handed from their threads to the accepting loop;
/// once the loop is done (`finish`), late ones and unclaimed ones are closed.
final class HandshakeInbox: @unchecked Sendable {
    private let lock = NSLock()
    private var ready: [(fd: Int32, peer: String, session: JobHandshake.Session)] = []
    private var finished = false

    func put(_ fd: Int32, peer: String, session: JobHandshake.Session) {
        lock.lock(); defer { lock.unlock() }
        if finished { close(fd) } else { ready.append((fd, peer, session)) }
    }

    func take() -> [(fd: Int32, peer: String, session: JobHandshake.Session)] {
        lock.lock(); defer { lock.unlock() }
        defer { ready = [] }
        return ready
    }

    func finish() {
        lock.lock(); defer { lock.unlock() }
        finished = true
        ready.forEach { close($0.fd) }
        ready = []
    }
}
