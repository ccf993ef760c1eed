import ArgumentParser
import CheckpointService
import Checkpointing
import Foundation
import Training

extension SoupJob.Method: ExpressibleByArgument {}

/// `tessera soup`: average fine-tuned checkpoints of one model (model soups) into a new run
/// directory that `eval`, `generate` and `train --resume` take.
struct Soup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Average checkpoints of one model into a model soup (uniform, weighted, or greedy by validation loss).",
        discussion: """
            The output is a new run directory holding one checkpoint (OUTPUT/checkpoints/step-N) and soup.json. \
            It takes its trainer state and run config from the first input (greedy: the best one) and averages the \
            AdamW moments with the same weights as the parameters, so `tessera train --resume OUTPUT --set train.steps=...` continues from it.
            """)

    @Option(help: "uniform (the mean), weighted (--weights), or greedy (add inputs best first while the validation loss strictly improves).")
    var method: SoupJob.Method

    @Option(parsing: .upToNextOption, help: "Checkpoint directories, or run directories (their newest complete checkpoint).")
    var inputs: [String]

    @Option(parsing: .upToNextOption, help: "One non-negative weight per input, summing to 1 (weighted only).")
    var weights: [Double] = []

    @Option(help: ArgumentHelp("Token shards whose validation split scores ingredients and soups (greedy default: the best input's data.dir).", valueName: "DIR"))
    var valData: String?

    @Option(parsing: .unconditional, help: "Validation batches of train.global_batch sequences (0: the whole validation split).")
    var batches = 0

    @Option(help: "New run directory for the soup (must not exist, or be empty); with --service, a name the service creates under its root's soups/.")
    var output: String

    @Option(help: ArgumentHelp("Run the soup on the checkpoint service at HOST:PORT (tessera ckpt serve), on the checkpoints it holds: --inputs are its steps (8 or step-00000008) or paths on its node; the job token comes from TESSERA_JOB_TOKEN.", valueName: "HOST:PORT"))
    var service: String?

    func validate() throws {
        guard !inputs.isEmpty else { throw ValidationError("--inputs needs at least one checkpoint directory") }
        if batches < 0 { throw ValidationError("--batches \(batches) must not be negative (0: the whole validation split)") }
    }

    func run() throws {
        if let service {
            let sink = try CheckpointSinks.service(.client(of: service, identity: "soup client"))
            let result = try sink.submit(ServiceJobRequest(method: method.rawValue, inputs: inputs, weights: weights, validationData: valData,
                                                           validationBatches: batches, output: output), replyTimeout: 3600)
            for line in result.log { print(line) }
            print("soup written by the service at \(service): \(result.checkpoint)")
            return
        }
        var checkpoints: [URL] = []
        for input in inputs {
            let (url, note) = try CheckpointArgument.resolve(input)
            if let note { try? FileHandle.standardError.write(contentsOf: Data("tessera: \(note)\n".utf8)) }
            checkpoints.append(url)
        }
        let job = SoupJob(method: method, inputs: checkpoints, weights: weights, validationData: valData, validationBatches: batches,
                          output: URL(fileURLWithPath: output))
        try job.run { print($0) }.table.forEach { print($0) }
    }
}

extension Soup {
    /// A soup job of the checkpoint service (in its child process, `tessera ckpt job`): a soup
    /// of the service's checkpoints, written as the run directory `ROOT/soups/NAME` on the
    /// service's node; its inputs and validation data only where `paths` allows.
    static func runServiceJob(_ request: ServiceJobRequest, root: URL, paths: ServicePaths, log: @escaping (String) -> Void) throws -> ServiceJobResult {
        guard let method = SoupJob.Method(rawValue: request.method) else {
            throw ValidationError("unknown soup method '\(request.method)'; choose uniform, weighted or greedy")
        }
        let job = SoupJob(method: method, inputs: try request.inputs.map { try request.resolve($0, root: root, paths: paths) }, weights: request.weights,
                          validationData: try request.validationData.map { try paths.check($0, what: "the validation data").path },
                          validationBatches: request.validationBatches,
                          output: try request.outputDirectory(root: root))
        let report = try job.run(log: log)
        return ServiceJobResult(checkpoint: report.checkpoint.path, log: report.table)
    }
}
