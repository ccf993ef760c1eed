import ArgumentParser
import Collectives
import CollectivesTCP
import Foundation
import Networking

/// `tessera launch`: starts local ranks on the TCP backend (torchrun's role).
struct Launch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start N local ranks of a tessera command on the TCP backend.",
        usage: "tessera launch [<options>] -- <command> ...",
        discussion: """
            Rank 0's standard output passes through unchanged (pipe bench JSON from it); every \
            rank's standard error, and the standard output of the other ranks, arrive on standard \
            error prefixed with "[rank K]". Ctrl-C is forwarded. When a rank fails, the others are \
            stopped and the launcher exits non-zero naming it. For several nodes, run one launcher \
            per node with the same --hostfile and that node's --node-rank.
            """)

    // `.unconditional`: `--nproc -1` is a value to reject, not a missing one (see validate()).
    @Option(parsing: .unconditional, help: "Ranks to start on this node (default: the hostfile's nproc for this node, else 1).")
    var nproc: Int?

    @Option(help: "JSON hostfile describing every node (see cluster/README.md).")
    var hostfile: String?

    @Option(parsing: .unconditional, help: "This node's index in the hostfile.")
    var nodeRank = 0

    @Option(help: "Rank 0's address (single node: 127.0.0.1).")
    var masterAddr: String?

    @Option(parsing: .unconditional, help: "Rank 0's port (default: a free port on one node, 29500 with a hostfile).")
    var masterPort: Int?

    @Option(parsing: .unconditional, help: "Seconds to wait for the other ranks after one fails, before killing them.")
    var graceSeconds: Double = 5

    // Everything from the first input that is not a launcher option, `--` included: a command
    // given without `--` is then named (Launch+Usage.swift) instead of being an "unexpected argument".
    @Argument(parsing: .captureForPassthrough, help: "The tessera command each rank runs, after --.")
    var command: [String] = []

    /// The command after `--` (validate() has refused one without it).
    var launched: [String] { command.first == "--" ? Array(command.dropFirst()) : command }

    func validate() throws {
        try validateValues()
    }

    func run() throws {
        let plan = try makePlan()
        // Kept alive until every rank has exited: its exit and signal handlers hold it weakly.
        let ranks = LocalRanks(plan: plan, arguments: launched, graceSeconds: graceSeconds)
        let code = try withExtendedLifetime(ranks) { try ranks.run() }
        if code != 0 { throw ExitCode(code) }
    }

    struct Plan {
        var localRanks: Int
        var firstRank: Int
        var worldSize: Int
        var masterAddress: String
        var masterPort: Int
        var token: String
        var interface: String?
    }

    func makePlan() throws -> Plan {
        let env = ProcessEnvironment.environment
        if let hostfile {
            let file = try Hostfile(contentsOf: hostfile)
            guard file.nodes.indices.contains(nodeRank) else {
                throw CommandLineError.nodeRankOutOfRange(nodeRank: nodeRank, hostfile: hostfile, nodes: file.nodes.count)
            }
            try requireThisMachine(in: file, path: hostfile)
            if let nproc, nproc != file.nodes[nodeRank].nproc {
                throw CommandLineError.nprocDisagreesWithHostfile(nproc: nproc, hostfile: hostfile, nodeRank: nodeRank, hostfileNproc: file.nodes[nodeRank].nproc)
            }
            guard let token = file.token ?? env["TESSERA_JOB_TOKEN"] else {
                throw CommandLineError.missingJobToken(hostfile: hostfile)
            }
            try JobToken.validate(token, source: file.token != nil ? "\(hostfile)'s token" : "TESSERA_JOB_TOKEN")
            return Plan(localRanks: file.nodes[nodeRank].nproc, firstRank: file.rankOffset(node: nodeRank),
                        worldSize: file.worldSize, masterAddress: masterAddr ?? file.masterAddress,
                        masterPort: masterPort ?? Int(file.masterPort), token: token, interface: file.nodes[nodeRank].interface)
        }
        let n = nproc ?? 1
        guard n >= 1 else { throw ValidationError("--nproc must be at least 1") }
        if let token = env["TESSERA_JOB_TOKEN"] { try JobToken.validate(token, source: "TESSERA_JOB_TOKEN") }
        return Plan(localRanks: n, firstRank: 0, worldSize: n, masterAddress: masterAddr ?? "127.0.0.1",
                    masterPort: try masterPort ?? Int(TCPJobSpec.freePort()), token: env["TESSERA_JOB_TOKEN"] ?? Self.newToken(),
                    interface: env["TESSERA_SOCKET_IFNAME"])
    }

    static func newToken() -> String { JobToken.generate() }
}
