import Foundation
import TensorCore

/// Token shard files: a 32-byte header, then little-endian tokens.
///
/// header: magic "TSRATOK\0" (8 bytes), version u32 = 1, token width u32 (1, 2 or 4 bytes),
/// token count u64, vocabulary size u32, reserved u32.
public enum TokenShardFormat {
    public static let magic: [UInt8] = Array("TSRATOK".utf8) + [0]
    public static let version: UInt32 = 1
    public static let headerSize = 32

    public static func encode(_ tokens: [Int32], vocabSize: Int) -> Data {
        let width = vocabSize <= 256 ? 1 : vocabSize <= 65536 ? 2 : 4
        var data = Data(magic)
        func append<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
        append(version); append(UInt32(width)); append(UInt64(tokens.count)); append(UInt32(vocabSize)); append(UInt32(0))
        data.reserveCapacity(headerSize + tokens.count * width)
        switch width {
        case 1: data.append(contentsOf: tokens.map { UInt8($0) })
        case 2: for t in tokens { append(UInt16(t)) }
        default: for t in tokens { append(UInt32(t)) }
        }
        return data
    }
}

/// Why data could not be used; each names the file or directory and what to do.
public struct DataError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

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
            let (shard, shardVocab) = try Self.read(path)
            all += shard
            vocab = max(vocab, shardVocab)
        }
        self.directory = directory
        self.split = split
        tokens = all
        vocabSize = vocab
    }

    static func read(_ path: String) throws -> ([Int32], Int) {
        guard let data = FileManager.default.contents(atPath: path) else { throw DataError("\(path) cannot be read") }
        let header = TokenShardFormat.headerSize
        guard data.count >= header, Array(data.prefix(8)) == TokenShardFormat.magic else {
            throw DataError("\(path) is not a Tessera token shard (wrong magic); re-create it with `tessera data prepare`")
        }
        func read<T: FixedWidthInteger>(_ offset: Int, _ type: T.Type) -> T {
            data.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
        }
        let version = read(8, UInt32.self), width = Int(read(12, UInt32.self)), count = Int(read(16, UInt64.self)), vocab = Int(read(24, UInt32.self))
        guard version == TokenShardFormat.version else { throw DataError("\(path): shard version \(version), this Tessera reads version \(TokenShardFormat.version)") }
        guard [1, 2, 4].contains(width) else { throw DataError("\(path): token width \(width) bytes is not 1, 2 or 4") }
        guard data.count == header + count * width else {
            throw DataError("\(path) is truncated: header says \(count) tokens (\(header + count * width) bytes), the file has \(data.count) bytes; re-create it with `tessera data prepare`")
        }
        var tokens = [Int32](repeating: 0, count: count)
        data.withUnsafeBytes { raw in
            let body = raw.baseAddress! + header
            switch width {
            case 1: for i in 0..<count { tokens[i] = Int32(body.load(fromByteOffset: i, as: UInt8.self)) }
            case 2: for i in 0..<count { tokens[i] = Int32(UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            default: for i in 0..<count { tokens[i] = Int32(bitPattern: UInt32(littleEndian: body.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
            }
        }
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= vocab }) {
            throw DataError("\(path): token \(bad) is outside the vocabulary of \(vocab) recorded in its header")
        }
        return (tokens, vocab)
    }

    /// Non-overlapping windows of `length + 1` tokens (inputs and shifted targets).
    public func sampleCount(length: Int) -> Int { max(0, (tokens.count - 1) / length) }
}

/// Turns text files into byte-level token shards with a train/validation split.
public enum DataPreparation {
    public struct Summary: Sendable {
        public var files: Int
        public var trainTokens: Int
        public var validationTokens: Int
    }

    /// Each file contributes its first (1 − valFraction) bytes to `train` and the rest to `val`,
    /// so the validation set samples every work.
    public static func prepare(inputs: [String], output: String, valFraction: Double, shardTokens: Int = 1 << 26) throws -> Summary {
        guard valFraction > 0, valFraction < 1 else { throw DataError("--val-fraction \(valFraction) must be between 0 and 1 (exclusive)") }
        var files: [String] = []
        for input in inputs {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: input, isDirectory: &isDirectory) else {
                throw DataError("input \(input) does not exist")
            }
            if isDirectory.boolValue {
                let names = ((try? FileManager.default.contentsOfDirectory(atPath: input)) ?? []).sorted()
                files += names.map { input + "/" + $0 }.filter { !FileManager.default.isDirectoryPath($0) }
            } else {
                files.append(input)
            }
        }
        guard !files.isEmpty else { throw DataError("no input files in \(inputs.joined(separator: ", "))") }
        var train: [Int32] = [], validation: [Int32] = []
        for file in files {
            guard let bytes = FileManager.default.contents(atPath: file) else { throw DataError("input \(file) cannot be read") }
            let cut = Int((Double(bytes.count) * (1 - valFraction)).rounded())
            train += bytes.prefix(cut).map { Int32($0) }
            validation += bytes.dropFirst(cut).map { Int32($0) }
        }
        guard train.count > 1, validation.count > 1 else {
            throw DataError("the inputs hold \(train.count + validation.count) bytes, too little to split; add text")
        }
        do {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
            for (split, tokens) in [("train", train), ("val", validation)] {
                for old in ((try? FileManager.default.contentsOfDirectory(atPath: output)) ?? []) where old.hasPrefix(split + "-") && old.hasSuffix(".tok") {
                    try FileManager.default.removeItem(atPath: output + "/" + old)
                }
                for (index, start) in stride(from: 0, to: tokens.count, by: shardTokens).enumerated() {
                    let slice = Array(tokens[start..<min(start + shardTokens, tokens.count)])
                    try TokenShardFormat.encode(slice, vocabSize: 256).write(to: URL(fileURLWithPath: output + String(format: "/%@-%05d.tok", split, index)))
                }
            }
            let meta: [String: Any] = ["tokenizer": "bytes", "vocab_size": 256, "files": files.count,
                                       "train_tokens": train.count, "val_tokens": validation.count, "val_fraction": valFraction]
            try JSONSerialization.data(withJSONObject: meta, options: [.prettyPrinted, .sortedKeys])
                .write(to: URL(fileURLWithPath: output + "/meta.json"))
        } catch let error as DataError {
            throw error
        } catch {
            throw DataError("cannot write token shards to \(output): \(error.localizedDescription)")
        }
        return Summary(files: files.count, trainTokens: train.count, validationTokens: validation.count)
    }
}

extension FileManager {
    func isDirectoryPath(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
    }
}

/// Which samples each step uses: a fresh permutation of all windows every epoch, drawn from
/// (seed, epoch), read in order; global sample p of the run is `permutation(p / count)[p % count]`.
/// A step takes `globalBatch` consecutive global samples; data rank d takes its contiguous
/// slice of them, so ranks never share a sample and no sample repeats within an epoch.
public final class Sampler {
    public let sampleCount: Int
    public let seed: UInt64
    private var cachedEpoch = -1
    private var permutation: [Int] = []

    public init(sampleCount: Int, seed: UInt64) {
        self.sampleCount = sampleCount
        self.seed = seed
    }

    public func sample(atGlobalPosition position: Int) -> Int {
        let epoch = position / sampleCount
        if epoch != cachedEpoch {
            var rng = RNG(seed: seed, stream: UInt64(epoch) &+ 0xDA7A)
            permutation = Array(0..<sampleCount)
            for i in stride(from: sampleCount - 1, to: 0, by: -1) { permutation.swapAt(i, rng.nextInt(below: i + 1)) }
            cachedEpoch = epoch
        }
        return permutation[position % sampleCount]
    }

    /// Sample indices of data rank `rank` (of `ranks`) at a step starting at `samplesSeen`.
    public func indices(samplesSeen: Int, globalBatch: Int, rank: Int, ranks: Int) -> [Int] {
        let local = globalBatch / ranks
        return (0..<local).map { sample(atGlobalPosition: samplesSeen + rank * local + $0) }
    }
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

extension TokenDataset {
    public var tokenCount: Int { tokens.count }
}
