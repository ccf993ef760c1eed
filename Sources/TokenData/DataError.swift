import Foundation

/// Why token data could not be read or prepared. Each case carries what it names (directory,
/// file, split, sizes, token) so callers and tests can match on it; `description` is one line
/// that names it and says what to do.
public enum DataError: Error, Equatable, CustomStringConvertible {
    // MARK: Reading a prepared data directory

    /// `directory` does not exist (or is not a directory). `currentDirectory` is the directory a
    /// relative path was resolved against; nil for an absolute path.
    case directoryMissing(directory: String, currentDirectory: String?)
    /// The directory exists but cannot be listed.
    case directoryUnreadable(directory: String, reason: String)
    /// No `<split>-*.tok` file in the directory.
    case noShards(directory: String, split: String)
    /// A shard that cannot be opened or mapped.
    case fileUnreadable(file: String, reason: String)
    /// Not a token shard at all.
    case wrongMagic(file: String)
    case unsupportedVersion(file: String, version: UInt32, supported: UInt32)
    case unsupportedWidth(file: String, width: Int)
    /// A vocabulary size the header cannot mean (0, or beyond 2³¹ so tokens would not fit Int32).
    case unsupportedVocabulary(file: String, vocabSize: Int)
    /// The file's size differs from what its header promises: `tokens` tokens make
    /// `expectedBytes`, the file has `actualBytes`. `tokens` is nil when even the header is short.
    case sizeMismatch(file: String, tokens: Int?, expectedBytes: Int, actualBytes: Int)
    /// Token number `index` of the shard is `token`, not below the shard's `vocabSize`.
    case tokenOutOfVocabulary(file: String, token: Int, index: Int, vocabSize: Int)
    /// A split too short for what the run asks: `needed` tokens (`requirement` says which
    /// settings make that number), it has `tokens`.
    case tooFewTokens(directory: String, split: String, tokens: Int, needed: Int, requirement: String)

    // MARK: Preparing shards

    /// `--val-fraction` outside (0, 1).
    case valFractionOutOfRange(Double)
    case inputMissing(path: String, currentDirectory: String?)
    case inputUnreadable(path: String, reason: String)
    /// No input file was usable; `skipped` are the files left out because they are not text.
    case noInputFiles(inputs: [String], skipped: [String])
    /// The usable inputs are too short to give both splits at least two tokens.
    case tooLittleText(bytes: Int, files: Int)
    case cannotWrite(directory: String, reason: String)
    /// `data prepare` never writes into a directory that already holds files.
    case outputExists(directory: String)

    public var description: String {
        switch self {
        case let .directoryMissing(directory, currentDirectory):
            var text = "data directory \(directory) does not exist"
            if let currentDirectory { text += " (a relative path, resolved against the current directory \(currentDirectory))" }
            if Self.isDefaultCorpus(directory) {
                let from = currentDirectory == nil ? "" : " (run tessera from there)"
                return text + "; scripts/setup.sh prepares data/shakespeare in the Tessera checkout\(from), or point to prepared data with --set data.dir=PATH"
            }
            return text + "; point to prepared data with --set data.dir=PATH, or create it with `tessera data prepare --input TEXT... --output \(directory)`"
        case let .directoryUnreadable(directory, reason):
            return "data directory \(directory) cannot be listed (\(reason)); check its permissions"
        case let .noShards(directory, split):
            let how = Self.isDefaultCorpus(directory) ? "run scripts/setup.sh, or " : ""
            return "data directory \(directory) has no \(split)-*.tok shards; \(how)prepare it with `tessera data prepare --input TEXT... --output \(directory)`"
        case let .fileUnreadable(file, reason):
            return "\(file) cannot be read (\(reason)); check that it exists and is readable"
        case let .wrongMagic(file):
            return "\(file) is not a Tessera token shard (wrong magic); re-create it with `tessera data prepare`"
        case let .unsupportedVersion(file, version, supported):
            return "\(file): shard version \(version), this Tessera reads version \(supported); re-create it with `tessera data prepare`"
        case let .unsupportedWidth(file, width):
            return "\(file): token width \(width) bytes is not 1, 2 or 4; re-create it with `tessera data prepare`"
        case let .unsupportedVocabulary(file, vocabSize):
            return "\(file): vocabulary size \(vocabSize) in its header is not between 1 and 2^31; re-create it with `tessera data prepare`"
        case let .sizeMismatch(file, tokens, expectedBytes, actualBytes):
            let what = actualBytes < expectedBytes ? "is truncated" : "is longer than its header says"
            let promise = tokens.map { "header says \($0) tokens (\(expectedBytes) bytes)" } ?? "a shard header needs \(expectedBytes) bytes"
            return "\(file) \(what): \(promise), the file has \(actualBytes) bytes; re-create it with `tessera data prepare`"
        case let .tokenOutOfVocabulary(file, token, index, vocabSize):
            return "\(file): token \(token) (number \(index) in the file) is outside the vocabulary of \(vocabSize) recorded in its header; re-create it with `tessera data prepare`"
        case let .tooFewTokens(directory, split, tokens, needed, requirement):
            let fix = split == "val" ? "lower data.seq_len, or prepare with a larger --val-fraction"
                                     : "lower data.seq_len or train.global_batch, or add data"
            return "\(directory) \(split) split has \(tokens) tokens, needs at least \(requirement) = \(needed); \(fix)"
        case let .valFractionOutOfRange(value):
            return "--val-fraction \(value) must be between 0 and 1 (exclusive), e.g. 0.05"
        case let .inputMissing(path, currentDirectory):
            let resolved = currentDirectory.map { " (a relative path, resolved against the current directory \($0))" } ?? ""
            return "input \(path) does not exist\(resolved); check the path given to --input"
        case let .inputUnreadable(path, reason):
            return "input \(path) cannot be read (\(reason)); check its permissions"
        case let .noInputFiles(inputs, skipped):
            if skipped.isEmpty { return "no input files in \(inputs.joined(separator: ", ")); give text files or directories of them to --input" }
            return "no text input files in \(inputs.joined(separator: ", ")): skipped \(skipped.count) that are not text (\(skipped.joined(separator: ", "))); pass --binary to take them as raw bytes"
        case let .tooLittleText(bytes, files):
            return "the \(files) input file\(files == 1 ? "" : "s") hold\(files == 1 ? "s" : "") \(bytes) bytes, too little to split into train and val; add text"
        case let .cannotWrite(directory, reason):
            return "cannot write token shards to \(directory): \(reason); check that the directory is writable and the disk has room"
        case let .outputExists(directory):
            return "--output \(directory) already exists and is not empty; choose a new directory (or remove it to prepare it again)"
        }
    }

    /// Whether `directory` is where `scripts/setup.sh` prepares the default corpus
    /// (`data/shakespeare`, the default `data.dir`), so running it would help.
    static func isDefaultCorpus(_ directory: String) -> Bool {
        let parts = directory.split(separator: "/").filter { $0 != "." }
        return parts.suffix(2).elementsEqual(["data", "shakespeare"])
    }

    /// The current directory when `path` is relative (what it is resolved against), else nil.
    static func resolutionBase(of path: String) -> String? {
        path.hasPrefix("/") ? nil : FileManager.default.currentDirectoryPath
    }
}
