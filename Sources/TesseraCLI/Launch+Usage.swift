import ArgumentParser
import Foundation

/// The launcher's usage checks: values the parser cannot judge (negative counts and times), and
/// a command given without `--`.
extension Launch {
    func validateValues() throws {
        if let nproc, nproc < 1 { throw ValidationError("--nproc \(nproc): must be at least 1") }
        if nodeRank < 0 { throw ValidationError("--node-rank \(nodeRank): must be 0 or more (an index into the hostfile's nodes)") }
        if let masterPort, !(1...65535).contains(masterPort) { throw ValidationError("--master-port \(masterPort): must be a port number (1-65535)") }
        if !(graceSeconds >= 0) || !graceSeconds.isFinite {
            throw ValidationError("--grace-seconds \(WorldOptions.text(graceSeconds)): must be 0 or more")
        }
        if let first = command.first, ["--help", "-h", "-help"].contains(first) { throw CleanExit.helpRequest(self) }   // captured with the command
        guard !launched.isEmpty else { throw ValidationError("nothing to launch: put the tessera command after --, e.g. tessera launch --nproc 2 -- train") }
        guard let first = command.first, first != "--" else { return }
        if first.hasPrefix("-") {
            let suggestion = OptionSuggestion.nearest(to: first, in: Launch.self).map { "did you mean '\($0)'? " } ?? ""
            throw ValidationError("unknown option '\(first)' for tessera launch; \(suggestion)(see tessera launch --help); the tessera command to launch goes after --")
        }
        // Everything before the command as typed, then `--`, then the command.
        let typed = Array(CommandLine.arguments.dropFirst())
        let before = typed.count >= command.count ? Array(typed.dropLast(command.count)) : ["launch"]
        let suggestion = (["tessera"] + before + ["--"] + command).map(Self.quoted).joined(separator: " ")
        throw ValidationError("put -- before the command: \(suggestion)")
    }

    static func quoted(_ argument: String) -> String {
        argument.isEmpty || argument.contains(where: { " \t'\"$\\".contains($0) }) ? "'\(argument.replacingOccurrences(of: "'", with: "'\\''"))'" : argument
    }
}
