import ArgumentParser

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
                let nearest = names.min { editDistance($0, word) < editDistance($1, word) }!
                let what = path.count == 1 ? "a \(path[0]) command" : "a subcommand of '\(path.joined(separator: " "))'"
                return "'\(word)' is not \(what); did you mean '\(nearest)'? (commands: \(names.joined(separator: ", ")))"
            }
            command = subcommands[index]
            path.append(word)
        }
        return nil
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var row = Array(0...b.count)
        for i in 1...a.count {
            var previous = row[0]
            row[0] = i
            for j in 1...b.count {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}
