import ArgumentParser
import Training
import TrainingConfig

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

/// The nearest real option of a command (`tessera launch --nrpoc 2` → '--nproc'), for the
/// usage errors the argument parser does not make itself (launch's, whose command follows `--`).
enum OptionSuggestion {
    /// The option `command`'s help lists that is nearest to `word` (within a third of its length).
    static func nearest(to word: String, in command: ParsableCommand.Type, root: ParsableCommand.Type = Tessera.self) -> String? {
        let help = root.helpMessage(for: command)
        let options = Set(help.split(whereSeparator: { !($0.isLetter || $0.isNumber || $0 == "-") })
            .map(String.init).filter { $0.hasPrefix("--") && $0.count > 2 })
        let name = String(word.prefix { $0 != "=" })
        guard let nearest = NearestWord.nearest(to: name, among: options.sorted()),
              NearestWord.editDistance(nearest, name) <= max(2, name.count / 3) else { return nil }
        return nearest
    }
}
