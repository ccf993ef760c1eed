import Foundation

/// Turns text files into byte-level token shards with a train/validation split.
public enum DataPreparation {
    public struct Summary: Sendable {
        /// How many input files were taken (`taken.count`).
        public var files: Int
        public var trainTokens: Int
        public var validationTokens: Int
        /// The files taken, in the order their bytes went into the splits.
        public var taken: [String]
        /// The files left out because they are not text (without `keepBinary`).
        public var skipped: [SkippedFile]
    }

    /// An input file left out, and why (e.g. "contains a NUL byte at offset 12").
    public struct SkippedFile: Sendable, Equatable, CustomStringConvertible {
        public var path: String
        public var reason: String
        public init(path: String, reason: String) { self.path = path; self.reason = reason }
        public var description: String { "\(path): \(reason)" }
    }

    /// Each file contributes its first (1 − valFraction) bytes to `train` and the rest to `val`,
    /// so the validation set samples every work. Inputs are files or directories (their files,
    /// not subdirectories, in name order). Files that are not text (a NUL byte, or not valid
    /// UTF-8) are skipped unless `keepBinary`. Shards hold `shardTokens` tokens (the last of a
    /// split fewer); they are written as the inputs are read, so memory stays near one shard
    /// and one input file whatever the corpus size.
    public static func prepare(inputs: [String], output: String, valFraction: Double, shardTokens: Int = 1 << 26,
                               keepBinary: Bool = false) throws -> Summary {
        guard valFraction > 0, valFraction < 1 else { throw DataError.valFractionOutOfRange(valFraction) }
        if let existing = try? FileManager.default.contentsOfDirectory(atPath: output), !existing.isEmpty {
            throw DataError.outputExists(directory: output)
        }
        precondition(shardTokens > 0, "shardTokens must be positive")
        var files: [String] = []
        for input in inputs {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: input, isDirectory: &isDirectory) else {
                throw DataError.inputMissing(path: input, currentDirectory: DataError.resolutionBase(of: input))
            }
            if isDirectory.boolValue {
                let names: [String]
                do { names = try FileManager.default.contentsOfDirectory(atPath: input).sorted() } catch {
                    throw DataError.inputUnreadable(path: input, reason: (error as NSError).localizedDescription)
                }
                files += names.map { input + "/" + $0 }.filter { !FileManager.default.isDirectoryPath($0) }
            } else {
                files.append(input)
            }
        }

        // First pass: which files are taken, and whether they give both splits enough tokens.
        var taken: [String] = [], skipped: [SkippedFile] = []
        var trainCount = 0, validationCount = 0
        for file in files {
            let problem = try withContents(of: file) { bytes -> String? in
                if !keepBinary, let problem = textProblem(in: bytes) { return problem }
                let cut = splitPoint(bytes: bytes.count, valFraction: valFraction)
                trainCount += cut
                validationCount += bytes.count - cut
                return nil
            }
            if let problem { skipped.append(SkippedFile(path: file, reason: problem)) } else { taken.append(file) }
        }
        guard !taken.isEmpty else { throw DataError.noInputFiles(inputs: inputs, skipped: skipped.map(\.path)) }
        guard trainCount > 1, validationCount > 1 else {
            throw DataError.tooLittleText(bytes: trainCount + validationCount, files: taken.count)
        }

        // Second pass: stream the bytes into shards.
        do {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
            for old in try FileManager.default.contentsOfDirectory(atPath: output)
            where (old.hasPrefix("train-") || old.hasPrefix("val-")) && old.hasSuffix(".tok") {
                try FileManager.default.removeItem(atPath: output + "/" + old)
            }
            let train = ShardWriter(directory: output, split: "train", shardTokens: shardTokens)
            let validation = ShardWriter(directory: output, split: "val", shardTokens: shardTokens)
            for file in taken {
                try withContents(of: file) { bytes in
                    let cut = splitPoint(bytes: bytes.count, valFraction: valFraction)
                    try train.append(UnsafeRawBufferPointer(rebasing: bytes[..<cut]))
                    try validation.append(UnsafeRawBufferPointer(rebasing: bytes[cut...]))
                }
            }
            try train.finish()
            try validation.finish()
            trainCount = train.total
            validationCount = validation.total
            let meta: [String: Any] = ["tokenizer": "bytes", "vocab_size": 256, "files": taken.count,
                                       "train_tokens": trainCount, "val_tokens": validationCount, "val_fraction": valFraction,
                                       "inputs": taken, "skipped": skipped.map(\.path)]
            try JSONSerialization.data(withJSONObject: meta, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
                .write(to: URL(fileURLWithPath: output + "/meta.json"))
        } catch let error as DataError {
            throw error
        } catch {
            throw DataError.cannotWrite(directory: output, reason: (error as NSError).localizedDescription)
        }
        return Summary(files: taken.count, trainTokens: trainCount, validationTokens: validationCount,
                       taken: taken, skipped: skipped)
    }

    /// Why `bytes` are not text, or nil when they are: the first NUL byte, or the first byte
    /// where they stop being valid UTF-8 (overlong forms, surrogates and values beyond
    /// U+10FFFF are invalid; a sequence cut off by the end of the file is too).
    public static func textProblem(in bytes: UnsafeRawBufferPointer) -> String? {
        let count = bytes.count
        var i = 0
        func continuation(_ offset: Int, _ range: ClosedRange<UInt8> = 0x80...0xBF) -> Bool {
            i + offset < count && range.contains(bytes[i + offset])
        }
        while i < count {
            let lead = bytes[i]
            if lead == 0 { return "contains a NUL byte at offset \(i)" }
            if lead < 0x80 { i += 1; continue }
            let length: Int
            switch lead {
            case 0xC2...0xDF: length = continuation(1) ? 2 : 0
            case 0xE0: length = continuation(1, 0xA0...0xBF) && continuation(2) ? 3 : 0
            case 0xE1...0xEC, 0xEE...0xEF: length = continuation(1) && continuation(2) ? 3 : 0
            case 0xED: length = continuation(1, 0x80...0x9F) && continuation(2) ? 3 : 0
            case 0xF0: length = continuation(1, 0x90...0xBF) && continuation(2) && continuation(3) ? 4 : 0
            case 0xF1...0xF3: length = continuation(1) && continuation(2) && continuation(3) ? 4 : 0
            case 0xF4: length = continuation(1, 0x80...0x8F) && continuation(2) && continuation(3) ? 4 : 0
            default: length = 0
            }
            if length == 0 { return "is not valid UTF-8 at offset \(i)" }
            i += length
        }
        return nil
    }

    /// Bytes of a file of `bytes` that go to `train` (the rest go to `val`).
    static func splitPoint(bytes: Int, valFraction: Double) -> Int {
        Int((Double(bytes) * (1 - valFraction)).rounded())
    }

    /// Runs `body` on the bytes of `file` (memory-mapped where the system allows).
    static func withContents<T>(of file: String, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: file), options: .alwaysMapped) } catch {
            throw DataError.inputUnreadable(path: file, reason: (error as NSError).localizedDescription)
        }
        return try data.withUnsafeBytes(body)
    }
}

/// Writes one split's byte tokens as `<split>-NNNNN.tok` shards of `shardTokens` tokens.
final class ShardWriter {
    let directory: String
    let split: String
    let shardTokens: Int
    private(set) var total = 0
    private var index = 0
    private var buffer: [UInt8] = []

    init(directory: String, split: String, shardTokens: Int) {
        self.directory = directory
        self.split = split
        self.shardTokens = shardTokens
        buffer.reserveCapacity(min(shardTokens, 1 << 26))
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        var rest = bytes[...]
        while !rest.isEmpty {
            let take = min(shardTokens - buffer.count, rest.count)
            buffer.append(contentsOf: rest.prefix(take))
            rest = rest.dropFirst(take)
            total += take
            if buffer.count == shardTokens { try flush() }
        }
    }

    func finish() throws {
        if !buffer.isEmpty { try flush() }
    }

    private func flush() throws {
        var data = TokenShardFormat.header(width: 1, count: buffer.count, vocabSize: 256)
        data.append(contentsOf: buffer)
        try data.write(to: URL(fileURLWithPath: directory + String(format: "/%@-%05d.tok", split, index)))
        index += 1
        buffer.removeAll(keepingCapacity: true)
    }
}

extension FileManager {
    func isDirectoryPath(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
    }
}
