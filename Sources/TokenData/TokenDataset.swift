import Foundation

/// One split (`train` or `val`) of a prepared data directory: the concatenation of its
/// `<split>-*.tok` shards in name order, read in place from memory-mapped files (no copy of the
/// corpus is made, so it may be larger than memory). Windows may span shard boundaries.
public final class TokenDataset {
    public let directory: String
    public let split: String
    /// The largest vocabulary size recorded by its shards; every token is below it.
    public let vocabSize: Int
    /// Tokens in all shards together.
    public let tokenCount: Int
    /// The shards in name order.
    public let shards: [TokenShard]
    /// `starts[i]` is the index of shard i's first token in the split; `starts.last == tokenCount`.
    private let starts: [Int]

    public init(directory: String, split: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DataError.directoryMissing(directory: directory, currentDirectory: DataError.resolutionBase(of: directory))
        }
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw DataError.directoryUnreadable(directory: directory, reason: (error as NSError).localizedDescription)
        }
        let files = names.filter { $0.hasPrefix(split + "-") && $0.hasSuffix(".tok") }.sorted()
        guard !files.isEmpty else { throw DataError.noShards(directory: directory, split: split) }
        shards = try files.map { try TokenShard(path: directory + "/" + $0) }
        var starts = [0]
        for shard in shards { starts.append(starts.last! + shard.tokenCount) }
        self.starts = starts
        self.directory = directory
        self.split = split
        tokenCount = starts.last!
        vocabSize = shards.map(\.vocabSize).max()!
    }

    /// Non-overlapping windows of `length + 1` tokens (inputs and shifted targets).
    public func sampleCount(length: Int) -> Int { max(0, (tokenCount - 1) / length) }

    /// Tokens `range` of the split (across shards as needed).
    public func tokens(_ range: Range<Int>) -> [Int32] {
        guard !range.isEmpty else { return [] }
        return [Int32](unsafeUninitializedCapacity: range.count) { buffer, initialized in
            copyTokens(from: range.lowerBound, count: range.count, into: buffer.baseAddress!)
            initialized = range.count
        }
    }

    /// Inputs and targets (samples.count × length each, row-major) for the given windows:
    /// window s is tokens s·length ..< s·length + length + 1.
    public func batch(samples: [Int], length: Int) -> (tokens: [Int32], targets: [Int32]) {
        let count = sampleCount(length: length)
        var window = [Int32](repeating: 0, count: length + 1)
        var inputs = [Int32](), targets = [Int32]()
        inputs.reserveCapacity(samples.count * length)
        targets.reserveCapacity(samples.count * length)
        for s in samples {
            precondition(s >= 0 && s < count, "sample \(s) is outside the \(count) windows of \(length + 1) tokens of \(directory) \(split)")
            window.withUnsafeMutableBufferPointer { copyTokens(from: s * length, count: length + 1, into: $0.baseAddress!) }
            inputs += window[0..<length]
            targets += window[1...length]
        }
        return (inputs, targets)
    }

    /// Copies `count` tokens starting at split index `start` into `out`, crossing shards.
    func copyTokens(from start: Int, count: Int, into out: UnsafeMutablePointer<Int32>) {
        precondition(start >= 0 && count >= 0 && start + count <= tokenCount, "tokens \(start)..<\(start + count) are outside \(tokenCount)")
        guard count > 0 else { return }
        // The last shard whose first token is at or before `start` (it holds `start`: an empty
        // shard shares its start with the next one, which the search prefers).
        var low = 0, high = shards.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if starts[middle] <= start { low = middle } else { high = middle - 1 }
        }
        var shard = low, position = start, written = 0
        while written < count {
            let offset = position - starts[shard]
            let take = min(count - written, shards[shard].tokenCount - offset)
            shards[shard].copy(from: offset, count: take, into: out + written)
            written += take
            position += take
            shard += 1
        }
    }
}
