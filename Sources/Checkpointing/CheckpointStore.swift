import Foundation
import TensorCore

/// What a training run needs, besides tensors, to continue exactly where it stopped.
public struct TrainerState: Codable, Equatable, Sendable {
    /// Optimizer steps completed.
    public var step: Int
    public var seed: UInt64
    /// Global samples consumed so far (the data loader's cursor).
    public var samplesSeen: Int
    public var tokensSeen: Int
    /// Hash of the config keys that change the numbers (model, data, optimizer); resuming
    /// with a different one is refused.
    public var configHash: String
    public var dataParallel: Int
    public var sequenceParallel: Int
    /// Ranks of a data group holding different experts (1 in checkpoints written before experts).
    public var expertParallel: Int

    public init(step: Int, seed: UInt64, samplesSeen: Int, tokensSeen: Int, configHash: String, dataParallel: Int, sequenceParallel: Int,
                expertParallel: Int = 1) {
        self.step = step; self.seed = seed; self.samplesSeen = samplesSeen; self.tokensSeen = tokensSeen
        self.configHash = configHash; self.dataParallel = dataParallel; self.sequenceParallel = sequenceParallel
        self.expertParallel = expertParallel
    }

    enum CodingKeys: String, CodingKey {
        case step, seed, samplesSeen, tokensSeen, configHash, dataParallel, sequenceParallel, expertParallel
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(step: c.decode(Int.self, forKey: .step), seed: c.decode(UInt64.self, forKey: .seed),
                      samplesSeen: c.decode(Int.self, forKey: .samplesSeen), tokensSeen: c.decode(Int.self, forKey: .tokensSeen),
                      configHash: c.decode(String.self, forKey: .configHash), dataParallel: c.decode(Int.self, forKey: .dataParallel),
                      sequenceParallel: c.decode(Int.self, forKey: .sequenceParallel),
                      expertParallel: c.decodeIfPresent(Int.self, forKey: .expertParallel) ?? 1)
    }
}

/// Where a tensor of a checkpoint sits in the whole tensor: this file holds the slice of
/// `globalShape` starting at `offset`; `axis` names the grid axis it is split along (nil:
/// replicated, the slice is the whole tensor).
public struct TensorShard: Codable, Equatable, Sendable {
    public var globalShape: [Int]
    public var offset: [Int]
    public var axis: String?

    public init(globalShape: [Int], offset: [Int], axis: String? = nil) {
        self.globalShape = globalShape; self.offset = offset; self.axis = axis
    }

    enum CodingKeys: String, CodingKey { case globalShape = "global_shape", offset, axis }
}

/// One checkpoint's contents.
public struct CheckpointContents {
    public var model: StateDict
    /// AdamW's moments, one tensor per parameter, named `NAME.exp_avg` and `NAME.exp_avg_sq`.
    public var optimizer: StateDict
    /// Each parameter's place in the whole model (from its placement), by parameter name;
    /// its moments share it.
    public var shards: [String: TensorShard]
    public var state: TrainerState
    /// The resolved run config (YAML) the checkpoint was written with.
    public var runConfig: String
    /// Hugging Face `config.json` of the model.
    public var huggingFaceConfig: [String: Any]

    public init(model: StateDict, optimizer: StateDict, shards: [String: TensorShard], state: TrainerState,
                runConfig: String, huggingFaceConfig: [String: Any]) {
        self.model = model; self.optimizer = optimizer; self.shards = shards
        self.state = state; self.runConfig = runConfig; self.huggingFaceConfig = huggingFaceConfig
    }
}

/// Checkpoints of one run: directories `step-00001000/` under `root`, each holding
/// `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json` (Hugging Face sharded
/// layout), `config.json`, `optimizer-00001-of-00001.safetensors` (moments per parameter, with each
/// parameter's global shape and offset in its metadata), `trainer_state.json`, `run.yaml`, and `DONE`, written last.
///
/// A checkpoint is assembled in a hidden temporary directory and renamed into place after
/// `DONE` is written, so a crash leaves either a complete checkpoint or none; a directory
/// without `DONE` is ignored by `latest()`.
public struct CheckpointStore {
    public let root: URL
    /// Largest model shard file, in bytes.
    public var maxShardBytes: Int

    public init(root: URL, maxShardBytes: Int = 2 << 30) {
        self.root = root
        self.maxShardBytes = maxShardBytes
    }

    public static func directoryName(step: Int) -> String { String(format: "step-%08d", step) }

    /// Complete checkpoints, oldest first.
    public func complete() -> [(step: Int, url: URL)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return names.compactMap { name -> (Int, URL)? in
            guard name.hasPrefix("step-"), let step = Int(name.dropFirst(5)) else { return nil }
            let url = root.appendingPathComponent(name)
            return FileManager.default.fileExists(atPath: url.appendingPathComponent("DONE").path) ? (step, url) : nil
        }.sorted { $0.0 < $1.0 }
    }

    public func latest() -> URL? { complete().last?.url }

    @discardableResult
    public func write(_ contents: CheckpointContents) throws -> URL {
        let fm = FileManager.default
        let final = root.appendingPathComponent(Self.directoryName(step: contents.state.step))
        let temporary = root.appendingPathComponent(".\(Self.directoryName(step: contents.state.step)).tmp-\(getpid())")
        do {
            try fm.createDirectory(at: root, withIntermediateDirectories: true)
            if fm.fileExists(atPath: temporary.path) { try fm.removeItem(at: temporary) }
            try fm.createDirectory(at: temporary, withIntermediateDirectories: false)
        } catch {
            throw CheckpointError.writeFailed(path: temporary.path, reason: error.localizedDescription)
        }
        func put(_ data: Data, _ name: String) throws {
            let url = temporary.appendingPathComponent(name)
            do { try data.write(to: url) } catch {
                throw CheckpointError.writeFailed(path: url.path, reason: error.localizedDescription)
            }
        }
        try writeModelShards(contents.model, put)
        try put(JSONSerialization.data(withJSONObject: contents.huggingFaceConfig, options: [.prettyPrinted, .sortedKeys]), "config.json")
        let shards = String(decoding: try JSONEncoder().encode(contents.shards), as: UTF8.self)
        try put(SafeTensors.encode(contents.optimizer, metadata: ["shards": shards, "step": String(contents.state.step)]),
                "optimizer-00001-of-00001.safetensors")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try put(encoder.encode(contents.state), "trainer_state.json")
        try put(Data(contents.runConfig.utf8), "run.yaml")
        try put(Data("step \(contents.state.step)\n".utf8), "DONE")
        do {
            if fm.fileExists(atPath: final.path) { try fm.removeItem(at: final) }   // an incomplete leftover, or a rewrite of the same step
            try fm.moveItem(at: temporary, to: final)
        } catch {
            throw CheckpointError.writeFailed(path: final.path, reason: error.localizedDescription)
        }
        return final
    }

    private func writeModelShards(_ model: StateDict, _ put: (Data, String) throws -> Void) throws {
        var shards: [[String]] = [[]]
        var shardBytes = 0
        for (name, tensor) in model.entries {
            if shardBytes > 0, shardBytes + tensor.count * 4 > maxShardBytes { shards.append([]); shardBytes = 0 }
            shards[shards.count - 1].append(name)
            shardBytes += tensor.count * 4
        }
        var weightMap: [String: String] = [:]
        for (index, names) in shards.enumerated() {
            let file = String(format: "model-%05d-of-%05d.safetensors", index + 1, shards.count)
            try put(SafeTensors.encode(StateDict(names.map { ($0, model[$0]!) }), metadata: ["format": "pt"]), file)
            for name in names { weightMap[name] = file }
        }
        let total = model.entries.reduce(0) { $0 + $1.tensor.count * 4 }
        let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
        try put(JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys]), "model.safetensors.index.json")
    }

    /// Reads a complete checkpoint directory; a missing `DONE` or any bad file is an error naming it.
    public static func read(_ directory: URL) throws -> CheckpointContents {
        let fm = FileManager.default
        guard fm.fileExists(atPath: directory.path) else {
            throw CheckpointError.missing(path: directory.path, hint: "pass a checkpoint directory such as runs/NAME/checkpoints/step-00001000")
        }
        guard fm.fileExists(atPath: directory.appendingPathComponent("DONE").path) else {
            throw CheckpointError.corrupt(path: directory.path, reason: "no DONE marker, so it was never finished")
        }
        let indexURL = directory.appendingPathComponent("model.safetensors.index.json")
        guard let indexData = fm.contents(atPath: indexURL.path),
              let index = try? JSONSerialization.jsonObject(with: indexData) as? [String: Any],
              let weightMap = index["weight_map"] as? [String: String] else {
            throw CheckpointError.corrupt(path: indexURL.path, reason: "missing or not a Hugging Face index (weight_map)")
        }
        var model = StateDict()
        for file in Set(weightMap.values).sorted() {
            let shard = try SafeTensors.read(directory.appendingPathComponent(file)).tensors
            for (name, tensor) in shard.entries { model[name] = tensor }
        }
        if let absent = weightMap.keys.sorted().first(where: { model[$0] == nil }) {
            throw CheckpointError.corrupt(path: indexURL.path, reason: "tensor \(absent) is listed but not in its shard")
        }
        let optimizerURL = directory.appendingPathComponent("optimizer-00001-of-00001.safetensors")
        let optimizer = try SafeTensors.read(optimizerURL)
        guard let shardText = optimizer.metadata["shards"],
              let shards = try? JSONDecoder().decode([String: TensorShard].self, from: Data(shardText.utf8)) else {
            throw CheckpointError.corrupt(path: optimizerURL.path, reason: "no shard metadata (written by an older Tessera?)")
        }
        let stateURL = directory.appendingPathComponent("trainer_state.json")
        guard let stateData = fm.contents(atPath: stateURL.path), let state = try? JSONDecoder().decode(TrainerState.self, from: stateData) else {
            throw CheckpointError.corrupt(path: stateURL.path, reason: "missing or not a trainer state")
        }
        let runURL = directory.appendingPathComponent("run.yaml")
        guard let run = fm.contents(atPath: runURL.path) else { throw CheckpointError.corrupt(path: runURL.path, reason: "missing") }
        let hf = (fm.contents(atPath: directory.appendingPathComponent("config.json").path))
            .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
        return CheckpointContents(model: model, optimizer: optimizer.tensors, shards: shards, state: state,
                                  runConfig: String(decoding: run, as: UTF8.self), huggingFaceConfig: hf)
    }

    /// Deletes all but the newest `keep` complete checkpoints (and stale temporaries).
    public func prune(keep: Int) {
        guard keep > 0 else { return }
        let fm = FileManager.default
        for old in complete().dropLast(keep) { try? fm.removeItem(at: old.url) }
    }
}
