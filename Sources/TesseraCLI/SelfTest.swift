import ArgumentParser
import Collectives
import Foundation

/// `tessera selftest comm`: the communicator conformance suite on the backend this process was
/// started with (like nccl-tests: run it on a new cluster before training).
struct SelfTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check that the communication backend works on this job (conformance suite).")

    @Argument(help: "What to test: comm.")
    var what: String = "comm"

    @OptionGroup var world: WorldOptions

    @Option(help: "Length of the largest buffer, in floats.")
    var large = 1_000_003

    @Option(help: "For failure tests: this rank kills itself (SIGKILL) in the middle of an allreduce.")
    var dieRank: Int?

    @Option(help: "For failure tests: this rank stops answering (sleeps) in the middle of an allreduce.")
    var hangRank: Int?

    func run() throws {
        guard what == "comm" else { throw ValidationError("unknown selftest '\(what)'; available: comm") }
        let comm = try world.makeWorld(defaultTimeout: 60)
        if dieRank != nil || hangRank != nil {
            var data = [Float](repeating: 1, count: 1 << 20)
            try comm.allReduce(&data, op: .sum)
            if comm.rank == dieRank { kill(getpid(), SIGKILL) }
            if comm.rank == hangRank { sleep(3600) }
            try comm.allReduce(&data, op: .sum)   // the survivors must throw here, naming dieRank
            throw CommandLineError.selftestMissedAStoppedRank(rank: dieRank ?? hangRank!)
        }
        let outcomes = try CommunicatorConformance.run(comm, lengths: CommunicatorConformance.defaultLengths(large: large))
        let failed = outcomes.filter { !$0.passed }
        if comm.rank == 0 {
            for outcome in outcomes { print(outcome) }
            print("\(outcomes.count - failed.count) passed, \(failed.count) failed")
        }
        if !failed.isEmpty { throw ExitCode(1) }
    }
}
