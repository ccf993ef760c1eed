import ArgumentParser
import Collectives
import CollectivesMPI
import Foundation
import Training

@main
struct Tessera: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Distributed training of transformer language models on CPU clusters.",
        subcommands: [Train.self, Launch.self, Eval.self, Generate.self, DataCommand.self, Report.self, Bench.self,
                      SelfTest.self])

    /// Runs the command; a thrown error becomes one line on standard error and a non-zero exit
    /// (and, under MPI, stops the other ranks instead of leaving them to their deadline).
    static func main() {
        // A launcher that has gone away (mpirun after Ctrl-C) closes our output pipes: a write
        // must fail, not kill the process before it has written its checkpoint.
        signal(SIGPIPE, SIG_IGN)
        MPICommunicator.deadlineExpired = { fail("\($0)") }
        let command: ParsableCommand
        do { command = try parseAsRoot() } catch {   // usage errors, --help
            if let message = unknownSubcommandMessage(Array(CommandLine.arguments.dropFirst())) {
                try? FileHandle.standardError.write(contentsOf: Data((message + "\n").utf8))
                exit(withError: ExitCode.validationFailure)
            }
            exit(withError: error)
        }
        do {
            var running = command
            try running.run()
        } catch let error where error is ExitCode || error is CleanExit || error is ValidationError {
            exit(withError: error)
        } catch let stop as TrainingInterrupted {
            // A requested stop, not a failure: every rank stops on its own, rank 0 says so.
            if ProcessEnvironment.worldRank ?? 0 == 0 { try? FileHandle.standardError.write(contentsOf: Data("tessera: \(stop)\n".utf8)) }
            Foundation.exit(130)
        } catch {
            fail("\(error)")
        }
    }

    static func fail(_ message: String) -> Never {
        let rank = ProcessEnvironment.worldRank
        let prefix = rank.map { "tessera: rank \($0): error: " } ?? "tessera: error: "
        try? FileHandle.standardError.write(contentsOf: Data((prefix + message + "\n").utf8))
        MPICommunicator.abortJob(code: 1)
        Foundation.exit(1)
    }
}

/// An error raised by the executable itself (bad arguments that ArgumentParser cannot see).
struct TesseraError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
