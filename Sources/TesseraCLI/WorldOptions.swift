import ArgumentParser
import Collectives
import CollectivesMPI
import CollectivesTCP
import Foundation

/// Which communication backend a command uses.
enum BackendChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, mpi, tcp, single
}

/// What the environment says about how this process was started.
enum ProcessEnvironment {
    static var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// This process's rank in the job, if a launcher said so (for error prefixes).
    static var worldRank: Int? {
        let env = environment
        return (env["OMPI_COMM_WORLD_RANK"] ?? env["PMIX_RANK"] ?? env["TESSERA_RANK"]).flatMap(Int.init)
    }

    /// The number of processes of the job, if a launcher said so.
    static var worldSize: Int? {
        let env = environment
        return (env["OMPI_COMM_WORLD_SIZE"] ?? env["PMIX_SIZE"] ?? env["TESSERA_WORLD_SIZE"]).flatMap(Int.init)
    }

    /// `auto`: MPI when started by mpirun or srun, TCP when started by `tessera launch` (or by
    /// hand with the TESSERA_* variables), otherwise a single process.
    static func resolve(_ choice: BackendChoice) -> BackendChoice {
        guard choice == .auto else { return choice }
        if MPICommunicator.launchedByMPI { return .mpi }
        if environment["TESSERA_WORLD_SIZE"] != nil || environment["TESSERA_HOSTFILE"] != nil { return .tcp }
        return .single
    }
}

/// Options every distributed command shares.
struct WorldOptions: ParsableArguments {
    @Option(help: "Communication backend: auto (mpi under mpirun, tcp under `tessera launch`, else single), mpi, tcp, single.")
    var backend: BackendChoice = .auto

    // `.unconditional`: `--timeout -1` is a value to reject, not a missing one.
    @Option(name: .customLong("timeout"), parsing: .unconditional, help: "Deadline in seconds for every blocking communication; overrides parallel.timeout_seconds.")
    var timeoutSeconds: Double?

    @Option(name: .customLong("tcp-seal"), help: "TCP backend: seal connections (on, off, auto: those that leave the host); overrides parallel.tcp_seal.")
    var tcpSeal: String?

    func validate() throws {
        if let timeoutSeconds, !(timeoutSeconds > 0) || !timeoutSeconds.isFinite {
            throw ValidationError("--timeout \(Self.text(timeoutSeconds)): must be more than 0 seconds")
        }
        if let tcpSeal, TCPSealMode(rawValue: tcpSeal) == nil {
            throw ValidationError("--tcp-seal \(tcpSeal): must be one of \(TCPSealMode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    /// A number as typed: `-1`, not `-1.0`.
    static func text(_ value: Double) -> String {
        value.isFinite && value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }

    /// The world communicator; `seal` is the config's `parallel.tcp_seal` (the TCP backend's
    /// default without a config), which `--tcp-seal` overrides.
    func makeWorld(defaultTimeout: Double = 300, seal: String = TCPSealMode.default.rawValue) throws -> Communicator {
        let timeout = timeoutSeconds ?? defaultTimeout
        switch ProcessEnvironment.resolve(backend) {
        case .mpi: return try MPICommunicator.world(timeoutSeconds: timeout) { Tessera.fail("\($0)") }
        case .tcp:
            let mode = try TCPSealMode(tcpSeal ?? seal, key: tcpSeal == nil ? "parallel.tcp_seal" : "--tcp-seal")
            return try TCPCommunicator.world(environment: ProcessEnvironment.environment, timeoutSeconds: timeout, seal: mode)
        case .single, .auto: return SingleProcessCommunicator(timeoutSeconds: timeout)
        }
    }
}
