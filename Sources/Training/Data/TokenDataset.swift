import Foundation

/// One split (`train` or `val`) of a prepared data directory, as one stream of tokens.
public final class TokenDataset {
    public let directory: String
    public let split: String
    public let tokens: [Int32]
    public let vocabSize: Int

    public init(directory: String, split: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DataError("data directory \(directory) does not exist; run scripts/setup.sh, or `tessera data prepare --input TEXT... --output \(directory)`")
        }
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasPrefix(split + "-") && $0.hasSuffix(".tok") }.sorted()
        guard !files.isEmpty else {
            throw DataError("data directory \(directory) has no \(split)-*.tok shards; prepare it with `tessera data prepare --input TEXT... --output \(directory)`")
        }
        var all: [Int32] = []
        var vocab = 0
        for file in files {
            let path = directory + "/" + file
            let (shard, shardVocab) = try TokenShard.read(path)
            all += shard
            vocab = max(vocab, shardVocab)
        }
        self.directory = directory
        self.split = split
        tokens = all
        vocabSize = vocab
    }

    /// Non-overlapping windows of `length + 1` tokens (inputs and shifted targets).
    public func sampleCount(length: Int) -> Int { max(0, (tokens.count - 1) / length) }
}


extension TokenDataset {
    /// Inputs and targets (samples.count × length each, row-major) for the given windows.
    public func batch(samples: [Int], length: Int) -> (tokens: [Int32], targets: [Int32]) {
        var inputs = [Int32](), targets = [Int32]()
        inputs.reserveCapacity(samples.count * length)
        targets.reserveCapacity(samples.count * length)
        for s in samples {
            let start = s * length
            inputs += tokens[start..<(start + length)]
            targets += tokens[(start + 1)..<(start + length + 1)]
        }
        return (inputs, targets)
    }
}
