import ArgumentParser

/// For a command line that ArgumentParser rejected: when it names a command group and then a
/// word that is none of the group's subcommands (`tessera data prep ...`), the message that
/// says so and suggests the nearest name. ArgumentParser would instead complain about the
/// first option after the word ("Unknown option '--input'"). Nil for any other line.
func unknownSubcommandMessage(_ arguments: [String], root: ParsableCommand.Type = Tessera.self) -> String? {
    var command = root
    var path = [root._commandName]
    for word in arguments {
        let subcommands = command.configuration.subcommands
        guard !subcommands.isEmpty, !word.hasPrefix("-"), word != "help" else { return nil }
        if let next = subcommands.first(where: { $0._commandName == word || $0.configuration.aliases.contains(word) }) {
            command = next
            path.append(word)
            continue
        }
        let names = subcommands.map { $0._commandName }
        let group = path.joined(separator: " ")
        let hint = nearestName(to: word, in: names).map { "; did you mean '\($0)'?" }
            ?? "; its subcommands are \(names.joined(separator: ", "))"
        return "Error: '\(word)' is not a subcommand of '\(group)'\(hint)\n  See '\(group) --help' for more information."
    }
    return nil
}

/// A name `word` abbreviates (is a prefix of), else the one within a small edit distance.
private func nearestName(to word: String, in names: [String]) -> String? {
    guard !word.isEmpty else { return nil }
    if let extended = names.first(where: { $0.hasPrefix(word) }) { return extended }
    func distance(_ a: [Character], _ b: [Character]) -> Int {   // Levenshtein, one row at a time
        var row = Array(0...b.count)
        for i in 1...a.count {
            var diagonal = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let above = row[j]
                row[j] = min(above + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1))
                diagonal = above
            }
        }
        return row[b.count]
    }
    let best = names.map { ($0, distance(Array(word), Array($0))) }.min { $0.1 < $1.1 }
    return best.flatMap { $0.1 <= max(2, word.count / 3) ? $0.0 : nil }
}
