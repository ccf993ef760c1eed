import ArgumentParser
import CheckpointService
import Checkpointing
import Foundation

/// `tessera ckpt upload-test` (hidden): a testing tool, not a user command. It plays the ranks
/// of a training job against a checkpoint service, with synthetic parts, so that
/// scripts/test-ckpt-service.sh can kill the service at random moments of real uploads. It also
/// asks for the newest step and downloads a step, as a resuming rank would.
struct CheckpointUploadTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upload-test",
        abstract: "Testing tool: upload synthetic checkpoint parts to a checkpoint service (scripts/test-ckpt-service.sh).",
        shouldDisplay: false)

    @Option(help: "HOST:PORT of the service.")
    var service: String

    @Option(help: "Ranks (parts per step), each uploading from its own thread.")
    var ranks = 2

    @Option(help: "First step to upload.")
    var from = 1

    @Option(help: "Steps to upload (0: none).")
    var steps = 0

    @Option(help: "Bytes of each rank's model tensor (its optimizer shard is twice that).")
    var bytes = 1 << 20

    @Flag(help: "Print the newest complete step (or 'none').")
    var latest = false

    @Option(help: "Download this step into --cache and print the directory.")
    var fetch: Int?

    @Option(help: "Cache directory for --fetch.")
    var cache = NSTemporaryDirectory() + "tessera-ckpt-cache"

    func validate() throws {
        guard ranks >= 1, steps >= 0, bytes >= 0, from >= 0 else { throw ValidationError("--ranks, --steps, --bytes, --from must be non-negative (--ranks at least 1)") }
    }

    func run() throws {
        let address = try ServiceAddress(service)
        let token = try CheckpointServe.jobToken(file: nil)
        func sink(_ rank: Int) throws -> ServiceCheckpointSink {
            var options = CheckpointSinkOptions.client(of: "\(address)", identity: "upload-test rank \(rank)", timeoutSeconds: 120)
            (options.token, options.cacheDirectory) = (token, URL(fileURLWithPath: cache))
            return try CheckpointSinks.service(options)
        }
        for step in from..<(from + steps) {
            final class Outcome: @unchecked Sendable { var receipts: [Result<PartReceipt, Error>?] = [] }
            let outcome = Outcome()
            outcome.receipts = Array(repeating: nil, count: ranks)
            let group = DispatchGroup()
            for rank in 0..<ranks {
                let client = try sink(rank)
                let part = try Self.part(step: step, rank: rank, ranks: ranks, bytes: bytes)
                group.enter()
                Thread { outcome.receipts[rank] = Result { try client.upload(part) }; group.leave() }.start()
            }
            group.wait()
            let receipts = try outcome.receipts.map { try $0!.get() }
            guard receipts.contains(where: \.committed) else {
                throw CheckpointServiceError.rejected(address: "\(address)", reason: "step \(step): every part acknowledged but none committed it")
            }
            print("committed step \(step)")
        }
        if latest { print(try sink(0).latestStep().map(String.init) ?? "none") }
        if let fetch { print(try sink(0).fetch(step: fetch).path) }
    }

    /// Deterministic synthetic content (`SyntheticCheckpointPart`): rank r's model and
    /// optimizer shards of a tensor of `bytes / 4` floats, and on rank 0 the index, config,
    /// trainer state (validation loss 10 / (step + 1)) and run config — a checkpoint that loads.
    static func part(step: Int, rank: Int, ranks: Int, bytes: Int) throws -> CheckpointPart {
        try SyntheticCheckpointPart.make(step: step, rank: rank, ranks: ranks, floats: max(1, bytes / 4), validationLoss: 10.0 / Double(step + 1))
    }
}
