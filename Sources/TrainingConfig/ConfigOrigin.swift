/// Where a config value came from, named in messages about it.
public enum ConfigOrigin: Equatable, Sendable, CustomStringConvertible {
    /// The defaults of the section structs.
    case defaults
    /// A YAML file (a config, or a checkpoint's run.yaml), at a line when known.
    case file(String, line: Int?)
    /// A `--set key=value` override.
    case override

    /// "defaults", "configs/tiny.yaml:12" (or the path alone), or "--set".
    public var description: String {
        switch self {
        case .defaults: return "defaults"
        case .file(let path, let line?): return "\(path):\(line)"
        case .file(let path, nil): return path
        case .override: return "--set"
        }
    }
}
