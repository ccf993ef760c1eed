import ArgumentParser
import Training

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
            var text = "Config keys (YAML sections, or --set section.key=value):\n"
            for key in ConfigSchema.keys {
                text += "  \(key.path.padding(toLength: 26, withPad: " ", startingAt: 0)) \(key.kind.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)) default \(key.defaultValue.padding(toLength: 17, withPad: " ", startingAt: 0)) \(key.help)\n"
            }
            print(text, terminator: "")
            throw CleanExit.message("")
        }
        return try RunConfig(file: config ?? defaultFile, overrides: overrides)
    }
}
