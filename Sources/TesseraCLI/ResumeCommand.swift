import Foundation

/// The command that continues a run, as this process was started: the same launcher (mpirun,
/// srun, `tessera launch`), the path of the executable that ran, and shell quoting, so it can
/// be pasted.
enum ResumeCommand {
    static func string(runDirectory: String, command: String = "train", environment: [String: String] = ProcessInfo.processInfo.environment,
                       executable: String = CommandLine.arguments.first ?? "tessera") -> String {
        let binary = quote(executablePath(executable))
        let train = "\(command) --resume \(quote(runDirectory))"
        if let size = environment["OMPI_COMM_WORLD_SIZE"] {
            return "mpirun -np \(size) \(binary) \(train)   # plus your own mpirun options"
        }
        if let size = environment["SLURM_NTASKS"] ?? environment["PMIX_SIZE"], environment["PMIX_RANK"] != nil {
            return "srun --mpi=pmix -n \(size) \(binary) \(train)"
        }
        if let size = environment["TESSERA_WORLD_SIZE"] {
            if let hostfile = environment["TESSERA_HOSTFILE"] {
                return "\(binary) launch --hostfile \(quote(hostfile)) --node-rank N -- \(train)   # on every node, N its index"
            }
            return "\(binary) launch --nproc \(size) -- \(train)"
        }
        return "\(binary) \(train)"
    }

    /// An absolute path when the executable was run by a path; its name when found on PATH.
    static func executablePath(_ argument: String) -> String {
        guard argument.contains("/") else { return argument }
        return URL(fileURLWithPath: argument).standardizedFileURL.path
    }

    /// `text` as one shell word.
    static func quote(_ text: String) -> String {
        let plain = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./=:,+-@%")
        if !text.isEmpty, text.unicodeScalars.allSatisfy({ plain.contains($0) }) { return text }
        return "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
