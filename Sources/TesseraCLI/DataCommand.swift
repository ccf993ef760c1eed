import ArgumentParser
import TokenData
import Training

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "data", abstract: "Prepare token shards.",
                                                    subcommands: [Prepare.self])

    struct Prepare: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Turn text files into byte-level token shards (vocab 256) with a train/validation split.")

        @Option(parsing: .upToNextOption, help: "Text files or directories of them.")
        var input: [String]

        @Option(help: "Directory for train-*.tok, val-*.tok and meta.json.")
        var output: String

        // Unconditional so that a negative number is read as this option's value (and then
        // refused by name) rather than taken for an option of its own.
        @Option(parsing: .unconditional, help: "Share of each file (its end) that goes to validation, between 0 and 1.")
        var valFraction = 0.05

        @Flag(help: "Also take files that are not text (NUL bytes or invalid UTF-8), as raw bytes.")
        var binary = false

        func validate() throws {
            guard !input.isEmpty else { throw ValidationError("--input needs at least one file or directory") }
            guard valFraction > 0, valFraction < 1 else {
                throw ValidationError("--val-fraction \(valFraction) must be between 0 and 1 (exclusive), e.g. 0.05")
            }
        }

        func run() throws {
            let summary = try DataPreparation.prepare(inputs: input, output: output, valFraction: valFraction, keepBinary: binary)
            for file in summary.taken { print("took \(file)") }
            for skip in summary.skipped { print("skipped \(skip.path): \(skip.reason) (not text; --binary takes it as raw bytes)") }
            let skipped = summary.skipped.isEmpty ? "" : ", skipped \(summary.skipped.count) not text"
            print("prepared \(output): \(summary.files) files\(skipped), \(summary.trainTokens) train tokens, \(summary.validationTokens) validation tokens")
        }
    }
}
