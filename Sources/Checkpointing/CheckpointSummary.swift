import Foundation

/// What `tessera ckpt list` shows of one checkpoint directory, read from its small files only
/// (no tensor data, no checksums).
public struct CheckpointSummary: Sendable {
    public var url: URL
    public var step: Int
    /// `DONE` present (an unfinished one is a partial directory or lacks it).
    public var complete: Bool
    /// Bytes of all its files.
    public var bytes: Int
    public var state: TrainerState?
    /// How many ranks wrote it (the W of `model-0000R-of-0000W.safetensors`).
    public var ranks: Int?

    /// The layout that wrote it, e.g. "2 ranks: data 2 × sequence 1 × expert 2".
    public var layout: String {
        let parts = ranks.map { "\($0) rank\($0 == 1 ? "" : "s")" } ?? "? ranks"
        guard let s = state else { return parts }
        return "\(parts): data \(s.dataParallel) × sequence \(s.sequenceParallel) × expert \(s.expertParallel)"
    }

    public init(_ url: URL, step: Int, complete: Bool) {
        self.url = url; self.step = step; self.complete = complete
        let fm = FileManager.default
        let names = (try? fm.contentsOfDirectory(atPath: url.path)) ?? []
        bytes = names.reduce(0) { total, name in
            total + ((try? fm.attributesOfItem(atPath: url.appendingPathComponent(name).path)[.size] as? Int) ?? 0)
        }
        state = fm.contents(atPath: url.appendingPathComponent(CheckpointLayout.trainerState).path)
            .flatMap { try? JSONDecoder().decode(TrainerState.self, from: $0) }
        ranks = names.lazy.compactMap(Self.worldSize(ofShardFile:)).first
    }

    /// Which sequence mixer each layer has, from a checkpoint's `config.json`, e.g.
    /// "mamba2 in layers 0, 2; attention in layer 1" (a hybrid, from Phi-Mamba's `mixer_types`)
    /// or "attention in all 4 layers"; nil when config.json says neither.
    public static func mixers(huggingFaceConfig config: [String: Any]) -> String? {
        if let types = config["mixer_types"] as? [String], !types.isEmpty {
            var order: [String] = [], layers: [String: [Int]] = [:]
            for (layer, type) in types.enumerated() {
                let kind = type == "discrete_mamba2" ? "mamba2" : type == "llama_attention" ? "attention" : type
                if layers[kind] == nil { order.append(kind) }
                layers[kind, default: []].append(layer)
            }
            if order.count == 1 { return "\(order[0]) in all \(types.count) layer\(types.count == 1 ? "" : "s")" }
            return order.map { kind in
                let list = layers[kind]!
                return "\(kind) in layer\(list.count == 1 ? "" : "s") \(list.map(String.init).joined(separator: ", "))"
            }.joined(separator: "; ")
        }
        if let count = config["num_hidden_layers"] as? Int, config["num_attention_heads"] != nil {
            return "attention in all \(count) layer\(count == 1 ? "" : "s")"
        }
        return nil
    }

    /// W of `model-0000R-of-0000W.safetensors` or `optimizer-...`.
    public static func worldSize(ofShardFile name: String) -> Int? {
        guard name.hasSuffix(".safetensors"), let range = name.range(of: "-of-") else { return nil }
        return Int(name[range.upperBound...].dropLast(".safetensors".count))
    }

    /// Every checkpoint directory under `root`, finished or not, by step.
    public static func all(root: URL) -> [CheckpointSummary] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return names.compactMap { name -> CheckpointSummary? in
            let url = root.appendingPathComponent(name)
            if let step = CheckpointLayout.step(ofDirectory: name) {
                return CheckpointSummary(url, step: step, complete: FileManager.default.fileExists(atPath: url.appendingPathComponent(CheckpointLayout.done).path))
            }
            if let step = CheckpointLayout.step(ofHidden: name, suffix: ".partial") {
                return CheckpointSummary(url, step: step, complete: false)
            }
            return nil
        }.sorted { ($0.step, $0.complete ? 1 : 0) < ($1.step, $1.complete ? 1 : 0) }
    }
}
