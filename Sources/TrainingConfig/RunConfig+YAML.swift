import Yams

// Reading and writing run configs as YAML: sections of `key: value` lines.

extension ConfigResolution {
    /// Sets every key of a YAML document (sections of `key: value`), each checked against
    /// the field table and attributed to `file` at its line.
    package mutating func merge(yaml text: String, file: String) throws {
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            let (line, problem) = Self.describe(error)
            throw ConfigError.invalidYAML(file: file, line: line, problem: problem)
        }
        guard let root, !Self.isNull(root) else { return }
        guard let sections = root.mapping else {
            throw ConfigError.notAMapping(what: "the top level", origin: .file(file, line: root.mark?.line))
        }
        var seen: [String: ConfigOrigin] = [:]
        for (sectionNode, body) in sections {
            let section = Self.text(of: sectionNode)
            let sectionOrigin = ConfigOrigin.file(file, line: sectionNode.mark?.line)
            guard let keys = body.mapping else {
                if ConfigField.sections.contains(section) {
                    if Self.isNull(body) { continue }   // an empty section
                    throw ConfigError.notAMapping(what: "section '\(section)'", origin: sectionOrigin)
                }
                throw ConfigError.unknownKey(key: section, suggestion: KeySuggestion.nearest(to: section), origin: sectionOrigin)
            }
            for (keyNode, value) in keys {
                let path = section + "." + Self.text(of: keyNode)
                let origin = ConfigOrigin.file(file, line: keyNode.mark?.line)
                if let first = seen[path] { throw ConfigError.duplicateKey(key: path, origin: origin, first: first) }
                seen[path] = origin
                if let nested = value.mapping, path == "moe.layers" {
                    for (innerKey, innerValue) in nested {
                        let inner = path + "." + Self.text(of: innerKey)
                        guard inner == "moe.layers.every", let scalar = innerValue.scalar else {
                            throw ConfigError.unknownKey(key: inner, suggestion: "moe.layers.every", origin: .file(file, line: innerKey.mark?.line))
                        }
                        try set(inner, scalar.string, from: .file(file, line: innerKey.mark?.line))
                    }
                    continue
                }
                guard let scalar = value.scalar else {
                    guard ConfigField.byPath[path] != nil else {
                        throw ConfigError.unknownKey(key: path, suggestion: KeySuggestion.nearest(to: path), origin: origin)
                    }
                    throw ConfigError.wrongType(key: path, value: value.mapping != nil ? "{…}" : "[…]",
                                                expected: ConfigField.byPath[path]!.kind, origin: origin)
                }
                try set(path, Self.isNull(value) ? "" : scalar.string, from: origin)
            }
        }
    }

    static func text(of node: Node) -> String {
        node.scalar?.string ?? (node.mapping != nil ? "{…}" : "[…]")
    }

    /// A plain `~`, `null` or empty value.
    static func isNull(_ node: Node) -> Bool {
        guard let scalar = node.scalar, scalar.style == .plain else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    /// Line and one-line problem of a Yams error.
    static func describe(_ error: Error) -> (line: Int?, problem: String) {
        switch error as? YamlError {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            return (mark.line, [context?.text, problem].compactMap { $0 }.joined(separator: " "))
        default:
            return (nil, String(describing: error).split(separator: "\n").first.map(String.init) ?? "")
        }
    }
}

extension RunConfig {
    /// The resolved config as YAML, sections and keys in table order, strings quoted; saved as
    /// a checkpoint's run.yaml and read back by `init(resolvedYAML:source:)`.
    public var yaml: String {
        var out = "# resolved Tessera run config\n"
        var section = ""
        for field in ConfigField.all {
            if field.section != section { section = field.section; out += "\(section):\n" }
            let value = field.text(in: self)
            out += "  \(field.key): \(field.kind == .string ? Self.quoted(value) : value)\n"
        }
        return out
    }

    /// A YAML double-quoted scalar.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    let hex = String(scalar.value, radix: 16, uppercase: true)
                    out += "\\x" + (hex.count < 2 ? "0" + hex : hex)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
