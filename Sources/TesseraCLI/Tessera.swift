import ArgumentParser
import Collectives
import CollectivesMPI
import Foundation
import Kernels
import Training

@main
struct Tessera: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Distributed training of transformer language models on CPU clusters.",
        version: TesseraVersion.string,
        subcommands: [Train.self, Distill.self, Launch.self, Eval.self, Generate.self, DataCommand.self, CheckpointCommand.self, Soup.self, Export.self,
                      Report.self, Bench.self, SelfTest.self, TokenCommand.self])

    /// Runs the command; a thrown error becomes one line on standard error and a non-zero exit
    /// (and, under MPI, stops the other ranks instead of leaving them to their deadline).
    static func main() {
        // A launcher that has gone away (mpirun after Ctrl-C) closes our output pipes: a write
        // must fail, not kill the process before it has written its checkpoint.
        signal(SIGPIPE, SIG_IGN)
        // Before anything computes: may execute this program again with another OpenBLAS core.
        // A bad TESSERA_GEMM_ISA is refused here, before any product.
        do { try KernelSelection.apply(); try Matmul.select(Matmul.implementation) } catch { fail("\(error)") }
        let arguments = negativeNumbersAttached(Array(CommandLine.arguments.dropFirst()), to: ["--weights"])
        if let mistyped = SubcommandSuggestion.problem(in: arguments, root: Tessera.self) {
            exit(withError: ValidationError(mistyped))
        }
        let command: ParsableCommand
        do { command = try parseAsRoot(arguments) } catch { exit(withError: error) }   // usage errors, --help
        do {
            var running = command
            try running.run()
        } catch let error where isArgumentParserError(error) {
            // --help, --version, usage errors, and help for a command with subcommands only.
            exit(withError: error)
        } catch let stop as TrainingInterrupted {
            // A requested stop, not a failure: every rank stops on its own, rank 0 says so.
            // Under mpirun every rank exits 0 (a non-zero exit makes mpirun abort the job and
            // print its failure box); elsewhere 130, the shell's status for an interrupt.
            MPIRunAbort.finishing.store(true, ordering: .releasing)
            if ProcessEnvironment.worldRank ?? 0 == 0 {
                let line = "tessera: \(stop); continue with: \(ResumeCommand.string(runDirectory: stop.runDirectory, command: stop.command))\n"
                try? FileHandle.standardError.write(contentsOf: Data(line.utf8))
            }
            Foundation.exit(stop.exitStatus(underMPI: MPICommunicator.launchedByMPI))
        } catch {
            fail("\(error)")
        }
    }

    /// `--weights -0.5 1.5` as `--weights=-0.5 --weights=1.5`: the parser takes a word starting
    /// with '-' for an option, so a list of numbers stopped at a negative one ("Missing value");
    /// attached, each reaches the command, which says what is wrong with it.
    static func negativeNumbersAttached(_ arguments: [String], to options: Set<String>) -> [String] {
        var result: [String] = [], list: String?
        for word in arguments {
            if word == "--" { list = nil; result.append(word); continue }
            if let option = list, Double(word) != nil {
                result.append("\(option)=\(word)")
                continue
            }
            list = options.contains(word) ? word : nil
            if list == nil { result.append(word) }
        }
        return result
    }

    /// Errors of the argument parser itself (help and version requests among them): it prints
    /// them, not `fail`.
    static func isArgumentParserError(_ error: Error) -> Bool {
        error is ExitCode || error is CleanExit || error is ValidationError
            || String(reflecting: type(of: error)).hasPrefix("ArgumentParser.")
    }

    static func fail(_ message: String) -> Never {
        let rank = ProcessEnvironment.worldRank
        let prefix = rank.map { "tessera: rank \($0): error: " } ?? "tessera: error: "
        try? FileHandle.standardError.write(contentsOf: Data((prefix + message + "\n").utf8))
        MPICommunicator.abortJob(code: 1)
        Foundation.exit(1)
    }
}
