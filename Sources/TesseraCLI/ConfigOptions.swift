import ArgumentParser
import Training
import TrainingConfig

/// `--config FILE` and `--set key=value`, shared by every command that reads a run config.
struct ConfigOptions: ParsableArguments {
    @Option(help: "Run config (YAML). Defaults apply to keys it leaves out.")
    var config: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Override one config key, e.g. --set train.steps=100 (repeatable).", valueName: "key=value"))
    var overrides: [String] = []

    @Flag(help: "List every config key with its default and meaning, then exit.")
    var helpConfig = false

    func load(defaultFile: String? = nil) throws -> RunConfig {
        if helpConfig {
            print(RunConfig.helpText, terminator: "")
            throw CleanExit.message("")
        }
        return try RunConfig(file: config ?? defaultFile, overrides: overrides)
    }
}
