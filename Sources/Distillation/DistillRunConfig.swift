import Foundation
import Training
import TrainingConfig
import Yams

/// The config of a distillation run: the teacher's model, the distill config file's
/// everything else.
///
/// Resolution: the teacher checkpoint's run.yaml (model, attention, moe, and the data, train
/// and eval keys it had), with `checkpoint`, `run`, `parallel` and `distill` back at their
/// defaults (a distillation never writes into the teacher's run directory or service by
/// accident), then the distill config file, then `--set` overrides. The file and the
/// overrides may not set `model.*`, `attention.*` or `moe.*`: the teacher decides those.
public enum DistillRunConfig {
    /// Sections only the teacher's run.yaml sets.
    public static let teacherSections: Set<String> = ["model", "attention", "moe"]

    public static func compose(teacher: RunConfig, file: String?, overrides: [String]) throws -> RunConfig {
        guard let file else { return try compose(teacher: teacher, text: nil, source: nil, overrides: overrides) }
        guard let data = FileManager.default.contents(atPath: file) else { throw ConfigError.unreadableFile(path: file) }
        return try compose(teacher: teacher, text: String(decoding: data, as: UTF8.self), source: file, overrides: overrides)
    }

    /// The same from the config's YAML `text` (a service job's), errors naming `source`.
    public static func compose(teacher: RunConfig, text: String?, source: String?, overrides: [String]) throws -> RunConfig {
        var base = teacher
        base.checkpoint = CheckpointSection()
        base.run = RunSection()
        base.parallel = ParallelSection()
        base.distill = DistillSection()
        let file = text == nil ? nil : (source ?? "config")
        base.source = file ?? "defaults"
        var resolution = ConfigResolution(base, origin: .defaults)
        if let file, let text {
            // Parse errors are reported by `merge` below with their line.
            if let root = try? Yams.compose(yaml: text), let sections = root.mapping {
                for (section, body) in sections {
                    let name = section.scalar?.string ?? ""
                    guard teacherSections.contains(name) else { continue }
                    let key = body.mapping?.first.map { name + "." + ($0.key.scalar?.string ?? "") } ?? name
                    let line = (body.mapping?.first?.key.mark?.line ?? section.mark?.line).map { ":\($0)" } ?? ""
                    throw DistillRunError.teacherKeyInConfig(key: key, origin: file + line)
                }
            }
            try resolution.merge(yaml: text, file: file)
        }
        try refuseTeacherKeys(overrides)
        try resolution.apply(overrides: overrides)
        let config = try resolution.validated()
        let d = config.distill
        if d.stage1Steps == 0 && d.stage2Steps == 0 && d.stage3Steps == 0 {
            throw DistillRunError.nothingToDistill(source: file ?? "--set")
        }
        for (key, value) in [("parallel.zero", config.parallel.zero), ("train.micro_batch", config.train.microBatch)] where value != 0 {
            throw DistillRunError.trainOnlyKey(key: key, value: value, origin: config.origin(of: key))
        }
        if config.reduction == .ordered { throw DistillRunError.orderedReduction(origin: config.origin(of: "parallel.reduction")) }
        return config
    }

    /// `--set` may not set the teacher's keys either.
    static func refuseTeacherKeys(_ overrides: [String]) throws {
        for override in overrides {
            let key = override.prefix { $0 != "=" }.trimmingCharacters(in: .whitespaces)
            if teacherSections.contains(String(key.prefix { $0 != "." })) {
                throw DistillRunError.teacherKeyInConfig(key: key, origin: "--set \(override)")
            }
        }
    }

    /// The keys whose values change a distillation's numbers: the model's, the distill
    /// section, data.dir, data.seq_len, train.global_batch and train.seed. A resumed run must
    /// have the checkpoint's values; the first that differs, as (key, saved, now).
    public static func numericDifference(saved: RunConfig, now: RunConfig) -> (key: String, saved: String, now: String)? {
        let fixed: Set<String> = ["data.dir", "data.seq_len", "train.global_batch", "train.seed"]
        for field in ConfigField.all where fixed.contains(field.path) || teacherSections.union(["distill"]).contains(field.section) {
            let old = field.text(in: saved), new = field.text(in: now)
            if old != new { return (field.path, old, new) }
        }
        return nil
    }
}

extension DistillRunConfig {
    /// The config of a resumed run given only its run directory: the checkpoint's run.yaml
    /// (the student's) with the model sections back to the teacher's, then `--set` overrides
    /// (which may not set the teacher's keys either).
    public static func resumed(saved: RunConfig, teacher: RunConfig, overrides: [String]) throws -> RunConfig {
        try refuseTeacherKeys(overrides)
        var config = saved
        config.model = teacher.model
        config.attention = teacher.attention
        config.moe = teacher.moe
        return try config.applying(overrides)
    }
}
