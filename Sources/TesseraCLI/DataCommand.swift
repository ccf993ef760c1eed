import ArgumentParser
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

        @Option(help: "Share of each file (its end) that goes to validation.")
        var valFraction = 0.05

        func run() throws {
            guard !input.isEmpty else { throw ValidationError("--input needs at least one file or directory") }
            let summary = try DataPreparation.prepare(inputs: input, output: output, valFraction: valFraction)
            print("prepared \(output): \(summary.files) files, \(summary.trainTokens) train tokens, \(summary.validationTokens) validation tokens")
        }
    }
}
