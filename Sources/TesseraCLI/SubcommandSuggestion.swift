import ArgumentParser
import Training

/// Catches a mistyped subcommand before the argument parser does: it would report the next
/// option as unknown (`tessera data prep --input f` → "Unknown option '--input'") or say
/// nothing helpful (`tessera trian`). Names the command and the nearest real subcommand.
enum SubcommandSuggestion {
    /// A one-line problem with `arguments`, or nil when every word before the first option
    /// names a real subcommand (or the command takes positional arguments).
    static func problem(in arguments: [String], root: ParsableCommand.Type) -> String? {
        var command = root
        var path = [root.configuration.commandName ?? "tessera"]
        for word in arguments {
            guard !word.hasPrefix("-") else { return nil }
            let subcommands = command.configuration.subcommands
            guard !subcommands.isEmpty else { return nil }
            if word == "help" { return nil }
            let names = subcommands.map { $0.configuration.commandName ?? "\($0)".lowercased() }
            guard let index = names.firstIndex(of: word) else {
                // Suggest and list only the commands `--help` shows (not hidden testing tools).
                let shown = zip(subcommands, names).filter { $0.0.configuration.shouldDisplay }.map(\.1)
                let nearest = NearestWord.nearest(to: word, among: shown.isEmpty ? names : shown)!
                let what = path.count == 1 ? "a \(path[0]) command" : "a subcommand of '\(path.joined(separator: " "))'"
                return "'\(word)' is not \(what); did you mean '\(nearest)'? (commands: \((shown.isEmpty ? names : shown).joined(separator: ", ")))"
            }
            command = subcommands[index]
            path.append(word)
        }
        return nil
    }
}
