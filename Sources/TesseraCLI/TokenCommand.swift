import ArgumentParser
import Networking

/// `tessera token`: prints a fresh job token (32 random bytes in hex) for `TESSERA_JOB_TOKEN`,
/// a hostfile's `token`, or `ckpt serve --token-file`.
struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Print a fresh job token (32 random bytes, hex) for TESSERA_JOB_TOKEN or --token-file.",
        discussion: """
            Every process of a job and its checkpoint service prove this token to each other; it never \
            travels. Tokens under \(JobToken.minimumBits) bits (fewer than 32 hex digits) are refused. \
            Example: export TESSERA_JOB_TOKEN=$(tessera token)
            """)

    func run() throws { print(JobToken.generate()) }
}
