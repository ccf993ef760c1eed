import Foundation
import Models
import Yams

/// Every key a run config may hold, with its type, default and meaning. The YAML file and
/// `--set key=value` overrides are checked against this list: an unknown key is an error that
/// suggests the nearest known one, a value of the wrong type names the key and the type.
public enum ConfigSchema {
    public enum Kind: String, Sendable { case int, float, bool, string }

    public struct Key: Sendable {
        public var path: String
        public var kind: Kind
        public var defaultValue: String
        public var help: String
    }

    public static let keys: [Key] = [
        Key(path: "model.vocab_size", kind: .int, defaultValue: "256", help: "vocabulary size (256: bytes)"),
        Key(path: "model.d_model", kind: .int, defaultValue: "256", help: "width of the residual stream"),
        Key(path: "model.layers", kind: .int, defaultValue: "4", help: "transformer blocks"),
        Key(path: "model.heads", kind: .int, defaultValue: "4", help: "attention (query) heads"),
        Key(path: "model.kv_heads", kind: .int, defaultValue: "4", help: "key/value heads (grouped-query attention when fewer than heads)"),
        Key(path: "model.ffn_hidden", kind: .int, defaultValue: "768", help: "SwiGLU hidden width"),
        Key(path: "model.rope_theta", kind: .float, defaultValue: "10000", help: "RoPE base"),
        Key(path: "model.norm_eps", kind: .float, defaultValue: "1e-5", help: "RMSNorm epsilon"),
        Key(path: "model.tie_embeddings", kind: .bool, defaultValue: "false", help: "share the embedding and LM head weights"),
        Key(path: "data.dir", kind: .string, defaultValue: "data/shakespeare", help: "token shards from `tessera data prepare`"),
        Key(path: "data.seq_len", kind: .int, defaultValue: "256", help: "tokens per training sequence"),
        Key(path: "train.steps", kind: .int, defaultValue: "1000", help: "optimizer steps"),
        Key(path: "train.global_batch", kind: .int, defaultValue: "8", help: "sequences per step, over all data-parallel ranks"),
        Key(path: "train.seed", kind: .int, defaultValue: "1234", help: "seed of initialisation and data order"),
        Key(path: "train.lr", kind: .float, defaultValue: "3e-4", help: "peak learning rate"),
        Key(path: "train.min_lr", kind: .float, defaultValue: "3e-5", help: "learning rate at the end of the cosine decay"),
        Key(path: "train.warmup_steps", kind: .int, defaultValue: "100", help: "linear warm-up steps"),
        Key(path: "train.beta1", kind: .float, defaultValue: "0.9", help: "AdamW β1"),
        Key(path: "train.beta2", kind: .float, defaultValue: "0.95", help: "AdamW β2"),
        Key(path: "train.eps", kind: .float, defaultValue: "1e-8", help: "AdamW epsilon"),
        Key(path: "train.weight_decay", kind: .float, defaultValue: "0.1", help: "AdamW decoupled weight decay (matrices only)"),
        Key(path: "train.grad_clip", kind: .float, defaultValue: "1.0", help: "global gradient-norm clip (0: off)"),
        Key(path: "train.log_every", kind: .int, defaultValue: "10", help: "steps between progress lines"),
        Key(path: "train.threads", kind: .int, defaultValue: "1", help: "BLAS threads per rank"),
        Key(path: "eval.every", kind: .int, defaultValue: "100", help: "steps between validation runs (0: only at the end)"),
        Key(path: "eval.batches", kind: .int, defaultValue: "8", help: "validation batches of train.global_batch sequences"),
        Key(path: "checkpoint.every", kind: .int, defaultValue: "0", help: "steps between checkpoints (0: only at the end)"),
        Key(path: "checkpoint.keep", kind: .int, defaultValue: "3", help: "newest checkpoints kept"),
        Key(path: "parallel.data", kind: .int, defaultValue: "0", help: "data-parallel ranks (0: world size / sequence)"),
        Key(path: "parallel.sequence", kind: .int, defaultValue: "1", help: "sequence-parallel ranks"),
        Key(path: "parallel.bucket_mb", kind: .float, defaultValue: "4", help: "gradient all-reduce bucket size in MiB"),
        Key(path: "parallel.overlap", kind: .bool, defaultValue: "true", help: "reduce gradient buckets while the backward pass runs"),
        Key(path: "parallel.timeout_seconds", kind: .float, defaultValue: "300", help: "deadline of every collective operation"),
        Key(path: "run.dir", kind: .string, defaultValue: "runs/default", help: "metrics, checkpoints and reports of this run"),
    ]

    static let byPath = Dictionary(uniqueKeysWithValues: keys.map { ($0.path, $0) })

    /// The known key closest to `path` (edit distance), for "did you mean" hints.
    public static func nearest(to path: String) -> String {
        keys.map(\.path).min { editDistance($0, path) < editDistance($1, path) }!
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in 1...max(b.count, 1) where !b.isEmpty {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}

/// A problem in a config file or override; the message names the file and key.
public struct ConfigError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A validated run configuration.
public struct RunConfig: Equatable, Sendable {
    /// Every key's value as text, after the file and overrides.
    public private(set) var values: [String: String]
    /// Where the values came from (for messages).
    public var source: String

    /// Defaults, then the YAML file (if any), then `key=value` overrides, each validated.
    public init(file: String?, overrides: [String] = []) throws {
        values = [:]
        source = file ?? "defaults"
        for key in ConfigSchema.keys { try set(key.path, key.defaultValue, from: "defaults") }
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ConfigError("config file \(file) cannot be read; pass an existing file such as configs/tiny.yaml")
            }
            try merge(yaml: String(decoding: data, as: UTF8.self), from: file)
        }
        self = try applying(overrides)
    }

    mutating func merge(yaml text: String, from file: String) throws {
        let parsed: Any?
        do { parsed = try Yams.load(yaml: text) } catch {
            throw ConfigError("\(file): not valid YAML (\(String(describing: error).split(separator: "\n").first ?? "")); fix the syntax")
        }
        guard let parsed else { return }
        guard let root = parsed as? [String: Any] else {
            throw ConfigError("\(file): the top level must be a mapping of sections (model:, data:, train:, ...)")
        }
        for (path, value) in Self.flatten(root) {
            try set(path, value, from: file)
        }
    }

    static func flatten(_ node: [String: Any], prefix: String = "") -> [(String, String)] {
        node.sorted { $0.key < $1.key }.flatMap { key, value -> [(String, String)] in
            let path = prefix.isEmpty ? key : prefix + "." + key
            if let child = value as? [String: Any] { return flatten(child, prefix: path) }
            return [(path, "\(value)")]
        }
    }

    mutating func set(_ path: String, _ raw: String, from origin: String) throws {
        guard let key = ConfigSchema.byPath[path] else {
            throw ConfigError("\(origin): unknown key '\(path)'; did you mean '\(ConfigSchema.nearest(to: path))'? (`tessera train --help-config` lists every key)")
        }
        let text = raw.trimmingCharacters(in: .whitespaces)
        let valid: Bool
        switch key.kind {
        case .int: valid = Int(text) != nil
        case .float: valid = Double(text)?.isFinite == true
        case .bool: valid = ["true", "false"].contains(text.lowercased())
        case .string: valid = !text.isEmpty
        }
        guard valid else {
            throw ConfigError("\(origin): \(path) = '\(text)' is not \(key.kind == .int ? "an integer" : key.kind == .float ? "a number" : key.kind == .bool ? "true or false" : "a non-empty string")")
        }
        // Canonical text, so "3e-3" and "0.003" are the same value (config hashes, resume).
        switch key.kind {
        case .int: values[path] = String(Int(text)!)
        case .float: values[path] = String(Double(text)!)
        case .bool: values[path] = text.lowercased()
        case .string: values[path] = text
        }
    }

    func checkRanges() throws {
        let positive = ["model.vocab_size", "model.d_model", "model.layers", "model.heads", "model.kv_heads", "model.ffn_hidden",
                        "data.seq_len", "train.steps", "train.global_batch", "train.log_every", "train.threads", "eval.batches",
                        "parallel.sequence"]
        for key in positive where int(key) < 1 { throw ConfigError("\(source): \(key) = \(int(key)) must be at least 1") }
        for key in ["train.warmup_steps", "eval.every", "checkpoint.every", "checkpoint.keep", "parallel.data"] where int(key) < 0 {
            throw ConfigError("\(source): \(key) = \(int(key)) must not be negative")
        }
        for key in ["train.lr", "train.min_lr", "train.eps", "parallel.bucket_mb", "parallel.timeout_seconds"] where float(key) <= 0 && key != "train.min_lr" {
            throw ConfigError("\(source): \(key) = \(values[key]!) must be positive")
        }
        for key in ["train.beta1", "train.beta2"] where !(0..<1).contains(float(key)) {
            throw ConfigError("\(source): \(key) = \(values[key]!) must be in [0, 1)")
        }
        let problems = model.problems
        if !problems.isEmpty { throw ConfigError("\(source): " + problems.joined(separator: "; ")) }
    }

    public func int(_ path: String) -> Int { Int(values[path]!)! }
    public func float(_ path: String) -> Float { Float(values[path]!)! }
    public func bool(_ path: String) -> Bool { values[path]! == "true" }
    public func string(_ path: String) -> String { values[path]! }

    public var model: ModelConfig {
        ModelConfig(vocabSize: int("model.vocab_size"), dModel: int("model.d_model"), layers: int("model.layers"),
                    heads: int("model.heads"), kvHeads: int("model.kv_heads"), ffnHidden: int("model.ffn_hidden"),
                    ropeTheta: float("model.rope_theta"), normEps: float("model.norm_eps"),
                    tieEmbeddings: bool("model.tie_embeddings"), maxSequenceLength: int("data.seq_len"))
    }

    /// The resolved config as YAML (sections in schema order), as saved in checkpoints.
    public var yaml: String {
        var out = "# resolved Tessera run config\n"
        var section = ""
        for key in ConfigSchema.keys {
            let parts = key.path.split(separator: ".", maxSplits: 1).map(String.init)
            if parts[0] != section { section = parts[0]; out += "\(section):\n" }
            let value = values[key.path]!
            out += "  \(parts[1]): \(key.kind == .string ? "\"\(value)\"" : value)\n"
        }
        return out
    }

    /// Keys that change the numbers a run produces; resuming requires the same values.
    static let numericKeys = ConfigSchema.keys.map(\.path).filter {
        ($0.hasPrefix("model.") || $0.hasPrefix("data.seq_len") || $0.hasPrefix("train."))
            && !["train.steps", "train.log_every", "train.threads"].contains($0)
    }

    public var numericHash: String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for key in Self.numericKeys { for byte in "\(key)=\(values[key]!);".utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 } }
        return String(h, radix: 16)
    }

    /// Differences in the number-changing keys between two configs, as "key: a → b".
    public func numericDifferences(from other: RunConfig) -> [String] {
        Self.numericKeys.filter { values[$0] != other.values[$0] }.map { "\($0): \(other.values[$0]!) → \(values[$0]!)" }
    }

    /// This config with `key=value` overrides applied (validated like `--set`).
    public func applying(_ overrides: [String]) throws -> RunConfig {
        var copy = self
        for override in overrides {
            guard let equals = override.firstIndex(of: "="), equals != override.startIndex else {
                throw ConfigError("--set \(override): expected key=value, e.g. --set train.steps=100")
            }
            try copy.set(String(override[..<equals]), String(override[override.index(after: equals)...]), from: "--set")
        }
        try copy.checkRanges()
        return copy
    }

    /// Builds a config from a resolved YAML (a checkpoint's run.yaml).
    public init(resolvedYAML text: String, source: String) throws {
        values = [:]
        self.source = source
        for key in ConfigSchema.keys { try set(key.path, key.defaultValue, from: "defaults") }
        try merge(yaml: text, from: source)
        try checkRanges()
    }
}
