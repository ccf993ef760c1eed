import Models

/// A run config being resolved: defaults, then a YAML file, then `--set` overrides, each
/// value remembering where it came from so that a bad value is reported at its origin.
/// Only `validated()` turns it into a `RunConfig` callers see. Package access, not public:
/// Distillation composes its config with it, no client of the package does.
package struct ConfigResolution {
    var config: RunConfig
    /// Field path → origin of its current value.
    private(set) var origins: [String: ConfigOrigin]

    /// Starts from `base`, every value attributed to `origin`.
    package init(_ base: RunConfig, origin: ConfigOrigin) {
        config = base
        origins = Dictionary(uniqueKeysWithValues: ConfigField.all.map { ($0.path, base.overridden.contains($0.path) ? .override : origin) })
    }

    /// Sets `path` from text, checking that the key exists and the text has its type.
    mutating func set(_ path: String, _ raw: String, from origin: ConfigOrigin) throws {
        // `moe.layers: {every: N}` and `--set moe.layers.every=N` spell "every N".
        if path == "moe.layers.every" { return try set("moe.layers", "every " + raw, from: origin) }
        guard let field = ConfigField.byPath[path] else {
            throw ConfigError.unknownKey(key: path, suggestion: KeySuggestion.nearest(to: path), origin: origin)
        }
        guard field.assign(raw, to: &config) else {
            throw ConfigError.wrongType(key: path, value: raw.trimmingCharacters(in: .whitespaces), expected: field.kind, origin: origin)
        }
        origins[path] = origin
    }

    /// Applies `key=value` overrides (`--set`).
    package mutating func apply(overrides: [String]) throws {
        for override in overrides {
            guard let equals = override.firstIndex(of: "=") else { throw ConfigError.malformedOverride(override) }
            let key = override[..<equals].trimmingCharacters(in: .whitespaces)
            guard !key.isEmpty else { throw ConfigError.malformedOverride(override) }
            var value = String(override[override.index(after: equals)...])
            if ConfigField.byPath[key]?.kind == .string { value = value.trimmingCharacters(in: .whitespaces) }
            try set(key, value, from: .override)
        }
    }

    /// The config, once every value is in its range and the model keys make a buildable model.
    package func validated() throws -> RunConfig {
        for field in ConfigField.all {
            let admitted = field.number(in: config).map(field.rule.admits) ?? field.rule.admits(field.text(in: config))
            if !admitted {
                throw ConfigError.outOfRange(key: field.path, value: field.text(in: config), rule: field.rule,
                                             origin: origins[field.path] ?? .defaults)
            }
        }
        var resolved = config
        if let field = ConfigField.byPath["moe.layers"] {
            guard let selection = MoELayerSelection(resolved.moe.layers) else {
                throw ConfigError.outOfRange(key: field.path, value: resolved.moe.layers, rule: field.rule, origin: origins[field.path] ?? .defaults)
            }
            resolved.moe.layers = selection.description   // canonical text for run.yaml and the hash
        }
        for path in [\RunConfig.distill.keepAttention, \RunConfig.model.attentionLayers] {
            let key = path == \RunConfig.model.attentionLayers ? "model.attention_layers" : "distill.keep_attention"
            guard let field = ConfigField.byPath[key] else { continue }
            guard let list = DistillLayerList(resolved[keyPath: path]), list.layers.allSatisfy({ $0 < resolved.model.layers }) else {
                throw ConfigError.outOfRange(key: field.path, value: resolved[keyPath: path], rule: field.rule,
                                             origin: origins[field.path] ?? .defaults)
            }
            resolved[keyPath: path] = list.description   // canonical text
        }
        if resolved.model.sequenceMixer == SequenceMixerKind.attention.name, !resolved.model.attentionLayers.isEmpty {
            throw ConfigError.invalidModel(source: (origins["model.attention_layers"] ?? .defaults).description, problems: [
                "model.attention_layers = \(resolved.model.attentionLayers) only applies with model.sequence_mixer: mamba2 (the layers that keep attention in a hybrid); this model is all attention: remove it, or set model.sequence_mixer=mamba2"])
        }
        resolved.overridden = Set(origins.filter { $0.value == .override }.keys)
        let problems = resolved.modelConfig.problems
        if !problems.isEmpty { throw ConfigError.invalidModel(source: modelSource, problems: problems) }
        return resolved
    }

    /// Names where the model keys came from: the config's source, "--set", or both.
    private var modelSource: String {
        let model = ConfigField.all.filter { $0.section == "model" }.compactMap { origins[$0.path] }
        let overridden = model.contains(.override)
        let fromSource = model.contains { $0 != .override && $0 != .defaults } || !overridden
        return [fromSource ? config.source : nil, overridden ? "--set" : nil].compactMap { $0 }.joined(separator: " with ")
    }
}
