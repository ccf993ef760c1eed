// The identity of the numbers a run produces: resuming requires the same values.

extension RunConfig {
    /// The keys that change the numbers a run produces (table order): model.*, data.seq_len
    /// and train.* except train.steps, train.log_every and train.threads, and moe.* when
    /// moe.experts > 0 (so a dense config keeps the hash it had before MoE existed), and
    /// model.sequence_mixer / model.attention_layers only for a Mamba model (likewise), and
    /// train.precision only when not fp32 and parallel.reduction only when not allreduce (likewise).
    var numericFields: [ConfigField] {
        ConfigField.all.filter { field in
            guard field.numeric else { return false }
            if field.section == "moe" { return moe.experts > 0 }
            if field.path == "train.precision" { return train.precision != "fp32" }
            if field.path == "parallel.reduction" { return parallel.reduction != GradientReduction.allreduce.rawValue }
            if field.path == "model.sequence_mixer" || field.path == "model.attention_layers" { return model.sequenceMixer != "attention" }
            return true
        }
    }

    /// The form `numericHash` takes now. Version 1 (unprefixed hex) hashed the keys in the
    /// field table's order, so reordering the table changed it; version 2 sorts them.
    public static let numericHashVersion = 2

    /// "v2:" and FNV-1a (64-bit, hex) over "key=value;" of the numeric keys sorted by key, with
    /// values in canonical text; checkpoints record it. Independent of the field table's order.
    public var numericHash: String {
        Self.numericHash(of: Dictionary(uniqueKeysWithValues: numericFields.map { ($0.path, $0.text(in: self)) }))
    }

    /// The version-2 hash of numeric keys and their canonical values.
    public static func numericHash(of values: [String: String]) -> String {
        "v\(numericHashVersion):" + fnv1a(values.keys.sorted().map { "\($0)=\(values[$0]!);" })
    }

    /// Whether a checkpoint's recorded hash is this config's: the current form, or version 1
    /// (table order, no prefix) that checkpoints written before the version recorded.
    public func matchesNumericHash(_ recorded: String) -> Bool {
        recorded == numericHash || recorded == numericHashVersion1
    }

    /// The version-1 form: the numeric keys in table order, no prefix.
    public var numericHashVersion1: String { Self.fnv1a(numericFields.map { "\($0.path)=\($0.text(in: self));" }) }

    private static func fnv1a(_ parts: [String]) -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in parts.joined().utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return String(h, radix: 16)
    }

    /// The keys that define the model (model.*, and moe.* when moe.experts > 0, as in the
    /// config hash) with their canonical values: what soup ingredients must share.
    public var modelSection: [String: String] {
        Dictionary(uniqueKeysWithValues: numericFields.filter { ["model", "moe"].contains($0.section) }.map { ($0.path, $0.text(in: self)) })
    }

    /// Differences in the number-changing keys, as "key: other's value → this value".
    public func numericDifferences(from other: RunConfig) -> [String] {
        let mine = Set(numericFields.map(\.path)), theirs = Set(other.numericFields.map(\.path))
        return ConfigField.all.filter { mine.contains($0.path) || theirs.contains($0.path) }.compactMap { field in
            let old = field.text(in: other), new = field.text(in: self)
            return old == new ? nil : "\(field.path): \(old) → \(new)"
        }
    }
}
