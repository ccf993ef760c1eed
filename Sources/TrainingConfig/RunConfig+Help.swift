// What `tessera train --help-config` prints, from the field table and the section defaults.

extension RunConfig {
    /// Every "section.key", in table order.
    public static var keyPaths: [String] { ConfigField.all.map(\.path) }

    /// One line per key: path, type, default, meaning and range, e.g.
    /// `  train.steps  int  default 1000  optimizer steps; must be at least 1`.
    public static var helpText: String {
        let defaults = RunConfig()
        func pad(_ text: String, _ width: Int) -> String { text.count >= width ? text + " " : text.padding(toLength: width, withPad: " ", startingAt: 0) }
        var text = "Config keys (YAML sections, or --set section.key=value):\n"
        for field in ConfigField.all {
            let shown = field.text(in: defaults)
            let value = field.kind == .string ? quoted(shown) : shown
            let range = field.rule.requirement.map { "; \($0)" } ?? ""
            text += "  \(pad(field.path, 26)) \(pad(field.kind.rawValue, 7)) default \(pad(value, 20)) \(field.help)\(range)\n"
        }
        return text
    }
}
