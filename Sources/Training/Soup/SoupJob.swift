import CheckpointService
import Checkpointing
import Foundation
import TensorCore
import TokenData
import TrainingConfig

/// One `tessera soup`: read the ingredients through `CheckpointStore.read` (whatever layout
/// wrote them), average them (`ModelSoup`), and write the soup as the only checkpoint of a new
/// run directory, `output/checkpoints/step-N`, with `output/soup.json` recording the recipe.
/// `tessera eval`, `generate` and `train --resume` take `output` like any run directory.
public struct SoupJob {
    public enum Method: String, CaseIterable, Sendable {
        case uniform, greedy, weighted
    }

    public var method: Method
    /// Checkpoint directories.
    public var inputs: [URL]
    /// One per input, for `weighted` only.
    public var weights: [Double]
    /// Token shards whose validation split scores ingredients and soups. Greedy needs it and
    /// defaults to the best ingredient's data.dir; uniform and weighted report losses only when it is given.
    public var validationData: String?
    /// Validation batches of train.global_batch sequences (0: the whole split).
    public var validationBatches: Int
    /// The new run directory (absent or empty).
    public var output: URL

    public init(method: Method, inputs: [URL], weights: [Double] = [], validationData: String? = nil, validationBatches: Int = 0, output: URL) {
        self.method = method; self.inputs = inputs; self.weights = weights; self.validationData = validationData
        self.validationBatches = validationBatches; self.output = output
    }

    /// What a soup came to.
    public struct Report {
        /// The checkpoint written.
        public var checkpoint: URL
        /// Each input's validation loss (empty when none was computed), in input order.
        public var ingredientLosses: [(checkpoint: URL, loss: Double)]
        public var soupLoss: Double?
        /// The inputs averaged (all of them, except for greedy) and their weights.
        public var kept: [URL]
        public var weights: [Double]

        /// The losses as `tessera soup` prints them: each input "in soup" or "left out", then the soup.
        public var table: [String] {
            ingredientLosses.map { url, loss in (kept.contains(url) ? "in soup  " : "left out ") + String(format: "%.4f  ", loss) + url.path }
                + (soupLoss.map { ["soup     " + String(format: "%.4f  ", $0) + checkpoint.path] } ?? [])
        }
    }

    /// A checkpoint as a soup ingredient, with the model and mixture-of-experts keys of its run.yaml.
    public static func ingredient(_ checkpoint: URL) throws -> SoupIngredient {
        let contents = try CheckpointStore.read(checkpoint)
        let config = try RunConfig(resolvedYAML: contents.runConfig, source: checkpoint.appendingPathComponent("run.yaml").path)
        return SoupIngredient(checkpoint: checkpoint, contents: contents, modelSection: config.modelSection)
    }

    /// Runs the job; `log` hears what it does and, for greedy, each decision.
    public func run(log: (String) -> Void = { _ in }) throws -> Report {
        guard !inputs.isEmpty else { throw SoupError.noIngredients }
        if method != .weighted, !weights.isEmpty { throw SoupError.weightsWithoutWeightedMethod(method: method.rawValue) }
        if method == .weighted { try ModelSoup.checkWeights(weights, inputs: inputs) }
        try OutputDirectory.ensureEmpty(output)
        var contents: CheckpointContents
        var losses: [(checkpoint: URL, loss: Double)] = []
        var soupLoss: Double?
        var kept = inputs
        var used = method == .weighted ? weights : inputs.map { _ in 1 / Double(inputs.count) }
        switch method {
        case .greedy:
            let validator = try makeValidator(base: inputs[0], log: log)
            let greedy = try ModelSoup.greedy(inputs, load: Self.ingredient, loss: { try validator.loss($0) }, log: log)
            contents = greedy.contents
            losses = inputs.map { url in (url, greedy.ranked.first { $0.checkpoint == url }!.loss) }
            soupLoss = greedy.loss
            kept = greedy.kept
            used = kept.map { _ in 1 / Double(kept.count) }
        case .uniform, .weighted:
            contents = method == .uniform ? try ModelSoup.uniform(inputs, load: Self.ingredient)
                                          : try ModelSoup.weighted(inputs, weights: weights, load: Self.ingredient)
            if validationData != nil {
                let validator = try makeValidator(base: inputs[0], log: log)
                for url in inputs {
                    let loss = try validator.loss(try Self.ingredient(url).contents.model, source: url.path)
                    log(String(format: "ingredient %@: validation loss %.6f", url.path, loss))
                    losses.append((url, loss))
                }
                soupLoss = try validator.loss(contents.model)
            }
        }
        // The soup's run lives in `output`: its saved config says so (not a numeric key: the
        // config hash, hence `train --resume`, is unaffected).
        var config = try RunConfig(resolvedYAML: contents.runConfig, source: "soup run.yaml")
        config.run.dir = output.path
        contents.runConfig = config.yaml
        let sink = try CheckpointSinks.make(CheckpointSinkOptions(directory: output.appendingPathComponent("checkpoints")))
        _ = try sink.prepare(owner: true)
        let written = try sink.fetch(step: try sink.deliver(contents.part()).step)
        let report = Report(checkpoint: written, ingredientLosses: losses, soupLoss: soupLoss, kept: kept, weights: used)
        try writeRecord(report)
        if let soupLoss { log(String(format: "soup (%@ of %d): validation loss %.6f", method.rawValue, kept.count, soupLoss)) }
        log("wrote \(written.path)")
        return report
    }

    private func makeValidator(base: URL, log: (String) -> Void) throws -> SoupValidator {
        let contents = try CheckpointStore.read(base)
        let config = try RunConfig(resolvedYAML: contents.runConfig, source: base.appendingPathComponent("run.yaml").path)
        let directory = validationData ?? config.data.dir
        let validator: SoupValidator
        do {
            validator = try SoupValidator(config: config, dataDirectory: directory, batches: validationBatches)
        } catch DataError.directoryMissing where validationData != nil {   // not --set data.dir: the option
            throw SoupError.validationDataMissing(directory: directory)
        }
        log("validation: \(validator.batches) batch(es) of \(validator.data.globalBatch) sequences from \(directory)")
        return validator
    }

    /// `output/soup.json`: method, inputs, weights, losses and the soup's checkpoint.
    private func writeRecord(_ report: Report) throws {
        var record: [String: Any] = [
            "method": method.rawValue, "inputs": inputs.map(\.path), "kept": report.kept.map(\.path), "weights": report.weights,
            "checkpoint": report.checkpoint.path]
        if !report.ingredientLosses.isEmpty { record["ingredient_val_loss"] = report.ingredientLosses.map(\.loss) }
        if let loss = report.soupLoss { record["soup_val_loss"] = loss }
        let url = output.appendingPathComponent("soup.json")
        do {
            try JSONSerialization.data(withJSONObject: record, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]).write(to: url)
        } catch {
            throw CheckpointError.writeFailed(path: url.path, reason: error.localizedDescription)
        }
    }
}
