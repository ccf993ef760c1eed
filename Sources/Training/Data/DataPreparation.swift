import Foundation

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
        guard valFraction > 0, valFraction < 1 else { throw DataError.valFractionOutOfRange(valFraction) }
        var files: [String] = []
        for input in inputs {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: input, isDirectory: &isDirectory) else {
                throw DataError.inputMissing(path: input, currentDirectory: DataError.resolutionBase(of: input))
            }
            if isDirectory.boolValue {
                let names = ((try? FileManager.default.contentsOfDirectory(atPath: input)) ?? []).sorted()
                files += names.map { input + "/" + $0 }.filter { !FileManager.default.isDirectoryPath($0) }
            } else {
                files.append(input)
            }
        }
        guard !files.isEmpty else { throw DataError.noInputFiles(inputs: inputs, skipped: []) }
        var train: [Int32] = [], validation: [Int32] = []
        for file in files {
            guard let bytes = FileManager.default.contents(atPath: file) else { throw DataError.inputUnreadable(path: file, reason: "read failed") }
            let cut = Int((Double(bytes.count) * (1 - valFraction)).rounded())
            train += bytes.prefix(cut).map { Int32($0) }
            validation += bytes.dropFirst(cut).map { Int32($0) }
        }
        guard train.count > 1, validation.count > 1 else {
            throw DataError.tooLittleText(bytes: train.count + validation.count, files: files.count)
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
            throw DataError.cannotWrite(directory: output, reason: error.localizedDescription)
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
