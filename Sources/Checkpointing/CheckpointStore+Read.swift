import Foundation
import TensorCore

extension CheckpointStore {
    /// Reads a committed checkpoint directory into whole tensors, whatever layout wrote it:
    /// every file's SHA-256 checked against `checksums.json`, each model tensor assembled from
    /// the slices the index and the files' shard metadata name, the moments likewise from the
    /// optimizer shards. A missing `DONE`, a missing or damaged file, or a tensor whose shape
    /// disagrees with the index is a `CheckpointError` naming the file.
    public static func read(_ directory: URL) throws -> CheckpointContents {
        let fm = FileManager.default
        guard fm.fileExists(atPath: directory.path) else {
            throw CheckpointError.missing(path: directory.path, hint: "pass a checkpoint directory such as runs/NAME/checkpoints/step-00001000")
        }
        guard fm.fileExists(atPath: directory.appendingPathComponent(CheckpointLayout.done).path) else {
            throw CheckpointError.corrupt(path: directory.path, reason: "no DONE marker, so it was never finished")
        }
        let files = try verifyChecksums(directory)
        let index = try CheckpointIndex.read(directory)
        let indexPath = directory.appendingPathComponent(CheckpointLayout.index).path
        if let unlisted = Set(index.weightMap.values).sorted().first(where: { !files.contains($0) }) {
            throw CheckpointError.corrupt(path: indexPath, reason: "it names \(unlisted), which checksums.json does not list")
        }
        var model = TensorAssembly(), axes: [String: String] = [:]
        // The index names one file per tensor; slices of a tensor split over ranks sit in the others.
        let modelFiles = Set(index.weightMap.values).union(files.filter { $0.hasPrefix("model-") && $0.hasSuffix(".safetensors") })
        for file in modelFiles.sorted() {
            let url = directory.appendingPathComponent(file)
            let (tensors, metadata) = try SafeTensors.read(url)
            let shards = try shardMetadata(metadata, url)
            for (name, tensor) in tensors.entries {
                guard index.weightMap[name] != nil else { throw CheckpointError.corrupt(path: url.path, reason: "tensor \(name) is not in the index") }
                try model.place(name, tensor, at: shards[name], file: url)
                if let axis = shards[name]?.axis { axes[name] = axis }
            }
        }
        if let absent = index.weightMap.keys.sorted().first(where: { !model.holds($0) }) {
            throw CheckpointError.corrupt(path: indexPath, reason: "tensor \(absent) is listed but not in its shard \(index.weightMap[absent]!)")
        }
        let modelTensors = try model.finish(directory: directory)
        for (name, tensor) in modelTensors.entries {
            if let expected = index.shapes[name], expected != tensor.shape {
                throw CheckpointError.corrupt(path: indexPath, reason: "tensor \(name) has shape \(tensor.shape) in \(model.files[name]!), the index says \(expected)")
            }
        }
        var optimizer = TensorAssembly()
        let optimizerFiles = files.filter(CheckpointLayout.isOptimizerFile).sorted()
        if optimizerFiles.isEmpty, !modelTensors.isEmpty {
            throw CheckpointError.missing(path: directory.appendingPathComponent(CheckpointLayout.optimizerFile(rank: 0, ranks: 1)).path,
                                          hint: "the checkpoint has no optimizer shard")
        }
        for file in optimizerFiles {
            let url = directory.appendingPathComponent(file)
            let (tensors, metadata) = try SafeTensors.read(url)
            let shards = try shardMetadata(metadata, url)
            for (name, tensor) in tensors.entries {
                let parameter = name.replacingOccurrences(of: #"\.exp_avg(_sq)?$"#, with: "", options: .regularExpression)
                try optimizer.place(name, tensor, at: shards[parameter], file: url)
            }
        }
        let moments = try optimizer.finish(directory: directory)
        for (name, tensor) in modelTensors.entries {
            for suffix in [".exp_avg", ".exp_avg_sq"] where moments[name + suffix]?.shape != tensor.shape {
                throw CheckpointError.corrupt(path: directory.appendingPathComponent(optimizerFiles.first ?? "optimizer").path,
                                              reason: "the moment \(name + suffix) is missing or not of shape \(tensor.shape)")
            }
        }
        let stateURL = directory.appendingPathComponent(CheckpointLayout.trainerState)
        guard let stateData = fm.contents(atPath: stateURL.path), let state = try? JSONDecoder().decode(TrainerState.self, from: stateData) else {
            throw CheckpointError.corrupt(path: stateURL.path, reason: "missing or not a trainer state")
        }
        let runURL = directory.appendingPathComponent(CheckpointLayout.runConfig)
        guard let run = fm.contents(atPath: runURL.path) else { throw CheckpointError.corrupt(path: runURL.path, reason: "missing") }
        let hf = (fm.contents(atPath: directory.appendingPathComponent(CheckpointLayout.huggingFaceConfig).path))
            .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
        let shards = Dictionary(uniqueKeysWithValues: modelTensors.entries.map { e in
            (e.name, TensorShard(globalShape: e.tensor.shape, offset: e.tensor.shape.map { _ in 0 }, axis: axes[e.name]))
        })
        return CheckpointContents(model: modelTensors, optimizer: moments, shards: shards, state: state,
                                  runConfig: String(decoding: run, as: UTF8.self), huggingFaceConfig: hf)
    }

    /// Checks every file `checksums.json` lists against its SHA-256; returns their names.
    @discardableResult
    public static func verifyChecksums(_ directory: URL) throws -> Set<String> {
        let sums = try checksums(directory)
        for (name, expected) in sums.sorted(by: { $0.key < $1.key }) {
            let file = directory.appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: file.path) else {
                throw CheckpointError.missing(path: file.path, hint: "checksums.json lists it; the checkpoint lost a shard: restore it or resume from an earlier checkpoint")
            }
            guard try CheckpointCommit.sha256(of: file) == expected else {
                // A shard whose structure is broken (truncated, bad header) says what is wrong with it.
                if name.hasSuffix(".safetensors") { _ = try SafeTensors.read(file) }
                throw CheckpointError.checksumMismatch(path: file.path)
            }
        }
        return Set(sums.keys)
    }

    /// The SHA-256 of every file, by name, as the checkpoint's `checksums.json` records them
    /// (not checked against the files: that is `verifyChecksums`).
    public static func checksums(_ directory: URL) throws -> [String: String] {
        let url = directory.appendingPathComponent(CheckpointLayout.checksums)
        guard let data = FileManager.default.contents(atPath: url.path),
              let manifest = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let sums = manifest["files"] as? [String: String] else {
            throw CheckpointError.corrupt(path: url.path, reason: "missing or not a checksum manifest (files: name → SHA-256)")
        }
        return sums
    }

    /// The per-tensor shard metadata of a Tessera shard file (empty for a plain safetensors file).
    static func shardMetadata(_ metadata: [String: String], _ url: URL) throws -> [String: TensorShard] {
        guard let text = metadata["shards"] else { return [:] }
        guard let shards = try? JSONDecoder().decode([String: TensorShard].self, from: Data(text.utf8)) else {
            throw CheckpointError.corrupt(path: url.path, reason: "its shard metadata does not parse")
        }
        return shards
    }
}

/// Whole tensors put together from slices, each at its offset in the global shape.
struct TensorAssembly {
    private(set) var order: [String] = []
    private var shapes: [String: [Int]] = [:]
    private var scalars: [String: [Float]] = [:]
    private var filled: [String: Int] = [:]
    /// The file each tensor was (last) found in, for messages.
    private(set) var files: [String: String] = [:]

    func holds(_ name: String) -> Bool { shapes[name] != nil }

    /// Places `tensor`, the slice `shard` of the whole tensor `name` (nil: the whole tensor).
    mutating func place(_ name: String, _ tensor: Tensor, at shard: TensorShard?, file: URL) throws {
        let global = shard?.globalShape ?? tensor.shape
        let offset = shard?.offset ?? tensor.shape.map { _ in 0 }
        func corrupt(_ reason: String) -> CheckpointError { .corrupt(path: file.path, reason: "tensor \(name) " + reason) }
        guard global.count == tensor.shape.count, offset.count == global.count,
              zip(zip(offset, tensor.shape), global).allSatisfy({ $0.0 >= 0 && $0.0 + $0.1 <= $1 }) else {
            throw corrupt("of shape \(tensor.shape) does not fit at offset \(offset) into its global shape \(global)")
        }
        if let known = shapes[name], known != global {
            throw corrupt("has global shape \(global) here and \(known) in \(files[name]!)")
        }
        if shapes[name] == nil {
            order.append(name)
            shapes[name] = global
            scalars[name] = tensor.shape == global ? tensor.scalars : [Float](repeating: 0, count: global.reduce(1, *))
            filled[name] = 0
            if tensor.shape == global { filled[name] = tensor.count; files[name] = file.lastPathComponent; return }
        }
        files[name] = file.lastPathComponent
        filled[name]! += tensor.count
        guard !tensor.shape.isEmpty, tensor.count > 0 else { return }
        let row = tensor.shape.last!, rows = tensor.count / row
        var strides = [Int](repeating: 1, count: global.count)
        for d in stride(from: global.count - 2, through: 0, by: -1) { strides[d] = strides[d + 1] * global[d + 1] }
        let source = tensor.scalars
        scalars[name]!.withUnsafeMutableBufferPointer { target in
            for r in 0..<rows {
                var rest = r, start = offset.last!
                for d in stride(from: tensor.shape.count - 2, through: 0, by: -1) {
                    start += (offset[d] + rest % tensor.shape[d]) * strides[d]
                    rest /= tensor.shape[d]
                }
                for i in 0..<row { target[start + i] = source[r * row + i] }
            }
        }
    }

    /// The whole tensors, in the order first seen; a tensor whose slices do not cover it
    /// exactly once is an error.
    func finish(directory: URL) throws -> StateDict {
        var out = StateDict()
        for name in order {
            let count = shapes[name]!.reduce(1, *)
            guard filled[name] == count else {
                throw CheckpointError.corrupt(path: directory.appendingPathComponent(files[name]!).path,
                                              reason: "tensor \(name): its slices hold \(filled[name]!) of its \(count) values; a shard is missing or repeated")
            }
            out[name] = Tensor(shape: shapes[name]!, scalars: scalars[name]!)
        }
        return out
    }
}
