import ArgumentParser
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

    @Option(help: "Bytes of each rank's model shard.")
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
            try ServiceCheckpointSink(address: address, token: token, cacheDirectory: URL(fileURLWithPath: cache), identity: "upload-test rank \(rank)")
        }
        for step in from..<(from + steps) {
            final class Outcome: @unchecked Sendable { var receipts: [Result<PartReceipt, Error>?] = [] }
            let outcome = Outcome()
            outcome.receipts = Array(repeating: nil, count: ranks)
            let group = DispatchGroup()
            for rank in 0..<ranks {
                let client = try sink(rank)
                let part = Self.part(step: step, rank: rank, ranks: ranks, bytes: bytes)
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

    /// Deterministic synthetic content: rank r's shard `model-0000(r+1)-of-0000R.safetensors`,
    /// and on rank 0 the index and trainer state.
    static func part(step: Int, rank: Int, ranks: Int, bytes: Int) -> CheckpointPart {
        var state = UInt64(step * 1_000_003 + rank + 1)
        let shard = Data((0..<bytes).map { _ -> UInt8 in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 56)
        })
        var files = [CheckpointFile(name: String(format: "model-%05d-of-%05d.safetensors", rank + 1, ranks), data: shard)]
        if rank == 0 {
            files.append(CheckpointFile(name: "model.safetensors.index.json", data: Data(#"{"metadata": {"step": \#(step)}}"#.utf8)))
            files.append(CheckpointFile(name: "trainer_state.json", data: Data(#"{"step": \#(step)}"#.utf8)))
        }
        return CheckpointPart(step: step, rank: rank, ranks: ranks, files: files, validationLoss: rank == 0 ? 10.0 / Double(step + 1) : nil)
    }
}
