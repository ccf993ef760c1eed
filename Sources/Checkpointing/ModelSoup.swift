import Foundation
import TensorCore

/// One checkpoint going into a soup.
public struct SoupIngredient {
    /// Where it was read from (named in every message).
    public var checkpoint: URL
    public var contents: CheckpointContents
    /// The safetensors dtype of each tensor (model and optimizer), by name; a name absent here
    /// is `F32`, the only dtype `CheckpointStore.read` returns today (`SafeTensors` refuses others).
    public var dtypes: [String: String]
    /// The model section of `run.yaml` as key → canonical value (e.g. `model.d_model` → `192`),
    /// filled by the caller, which knows the run config's keys; compared like `config.json`.
    public var modelSection: [String: String]

    public init(checkpoint: URL, contents: CheckpointContents, dtypes: [String: String] = [:], modelSection: [String: String] = [:]) {
        self.checkpoint = checkpoint; self.contents = contents; self.dtypes = dtypes; self.modelSection = modelSection
    }

    func dtype(_ name: String) -> String { dtypes[name] ?? "F32" }
}

/// Averages of checkpoints of one model (model soups, Wortsman et al. 2022): uniform, weighted,
/// and greedy.
///
/// Rules, whatever the method:
/// - Ingredients must have the same tensor names, shapes and dtypes (model and optimizer),
///   the same `config.json` and the same model section of `run.yaml`; the first difference is
///   a `SoupError` naming the tensor or key and both checkpoints.
/// - Sums are accumulated in Float64 and rounded to Float32 once, so a soup of N copies of one
///   checkpoint is that checkpoint bit for bit.
/// - Floating-point tensors are averaged; tensors of any other dtype (integers, booleans) are
///   copied from the base ingredient (`combination(dtype:)`).
/// - The output is an ordinary checkpoint. Its base ingredient — the first input (uniform,
///   weighted) or the one with the lowest validation loss (greedy) — gives it its trainer state
///   (step, seed, data cursor, config hash), run config, `config.json` and shard metadata. The
///   AdamW moments are averaged with the same weights as the parameters (a convex combination
///   of second moments stays non-negative), so `train --resume` of a soup continues with
///   moments of the right scale rather than zeroed ones, whose first update would be
///   ~1/sqrt(1-β2) times too large.
///
/// Ingredients are loaded one at a time through `load` (usually `CheckpointStore.read`), so
/// memory holds one ingredient and the Float64 sums, not every checkpoint.
public enum ModelSoup {
    /// What a tensor of a dtype contributes to the soup.
    public enum Combination: Equatable {
        /// Weighted mean over the ingredients.
        case average
        /// The base ingredient's value (integer counters, masks: a mean has no meaning).
        case copyFromBase
    }

    /// Floating-point safetensors dtypes are averaged; every other dtype is copied.
    public static func combination(dtype: String) -> Combination {
        ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"].contains(dtype) ? .average : .copyFromBase
    }

    /// Checks `--weights`: one per input, each non-negative, summing to 1 within 1e-6.
    public static func checkWeights(_ weights: [Double], inputs: [URL]) throws {
        guard !inputs.isEmpty else { throw SoupError.noIngredients }
        guard weights.count == inputs.count else { throw SoupError.weightCount(weights: weights.count, inputs: inputs.count) }
        if let index = weights.firstIndex(where: { !($0 >= 0) }) {
            throw SoupError.negativeWeight(weight: weights[index], input: inputs[index].path)
        }
        let sum = weights.reduce(0, +)
        guard abs(sum - 1) <= 1e-6 else { throw SoupError.weightsDoNotSumToOne(sum: sum) }
    }

    /// The mean of the inputs.
    public static func uniform(_ inputs: [URL], load: (URL) throws -> SoupIngredient) throws -> CheckpointContents {
        try accumulate(inputs, weights: inputs.map { _ in 1 }, load: load)
    }

    /// Σ wᵢ·θᵢ / Σ wᵢ over the inputs; `weights` are checked by `checkWeights` first.
    public static func weighted(_ inputs: [URL], weights: [Double], load: (URL) throws -> SoupIngredient) throws -> CheckpointContents {
        try checkWeights(weights, inputs: inputs)
        return try accumulate(inputs, weights: weights, load: load)
    }

    private static func accumulate(_ inputs: [URL], weights: [Double], load: (URL) throws -> SoupIngredient) throws -> CheckpointContents {
        guard let first = inputs.first else { throw SoupError.noIngredients }
        var soup = SoupAccumulator(base: try load(first))
        try soup.add(soup.base, weight: weights[0])
        for (url, weight) in zip(inputs.dropFirst(), weights.dropFirst()) { try soup.add(try load(url), weight: weight) }
        return soup.contents()
    }

    /// Greedy soup: every input's validation loss (`loss` of its parameters), then, from the
    /// best, each next-best input joins the uniform soup only if the soup's loss strictly
    /// improves. `log` hears one line per decision. The soup's loss is never above the best
    /// input's (for a deterministic `loss`).
    public static func greedy(_ inputs: [URL], load: (URL) throws -> SoupIngredient, loss: (StateDict) throws -> Double,
                              log: (String) -> Void = { _ in }) throws -> GreedySoup {
        guard !inputs.isEmpty else { throw SoupError.noIngredients }
        var losses: [(checkpoint: URL, loss: Double)] = []
        var reference: SoupIngredient?
        for url in inputs {
            let ingredient = try load(url)
            if let reference { try verify(ingredient, against: reference) } else { reference = ingredient }
            let value = try loss(ingredient.contents.model)
            log(String(format: "ingredient %@: validation loss %.6f", url.path, value))
            losses.append((url, value))
        }
        let ranked = losses.enumerated().sorted { ($0.element.loss, $0.offset) < ($1.element.loss, $1.offset) }.map(\.element)
        var soup = SoupAccumulator(base: try load(ranked[0].checkpoint))
        try soup.add(soup.base, weight: 1)
        var current = ranked[0].loss
        var kept = [ranked[0].checkpoint]
        log(String(format: "start from the best ingredient %@ (%.6f)", ranked[0].checkpoint.path, current))
        for candidate in ranked.dropFirst() {
            let ingredient = try load(candidate.checkpoint)
            let trial = try soup.averagedModel(adding: ingredient, weight: 1)
            let value = try loss(trial)
            if value < current {
                log(String(format: "kept %@: the soup's loss improves %.6f -> %.6f", candidate.checkpoint.path, current, value))
                try soup.add(ingredient, weight: 1)
                current = value
                kept.append(candidate.checkpoint)
            } else {
                log(String(format: "left out %@: the soup's loss would be %.6f, not below %.6f", candidate.checkpoint.path, value, current))
            }
        }
        return GreedySoup(contents: soup.contents(), ranked: ranked, kept: kept, loss: current)
    }

    /// Throws the first difference between `other` and `base`: a tensor name (model, then
    /// optimizer), a shape, a dtype, a `config.json` key, a key of run.yaml's model section.
    public static func verify(_ other: SoupIngredient, against base: SoupIngredient) throws {
        let a = base.checkpoint.path, b = other.checkpoint.path
        for (kind, mine, theirs) in [("model", base.contents.model, other.contents.model),
                                     ("optimizer", base.contents.optimizer, other.contents.optimizer)] {
            if let name = mine.names.first(where: { theirs[$0] == nil }) {
                throw SoupError.tensorMissing(name: name, kind: kind, presentIn: a, absentFrom: b)
            }
            if let name = theirs.names.first(where: { mine[$0] == nil }) {
                throw SoupError.tensorMissing(name: name, kind: kind, presentIn: b, absentFrom: a)
            }
            for name in mine.names {
                let x = mine[name]!.shape, y = theirs[name]!.shape
                if x != y { throw SoupError.shapeMismatch(name: name, shape: x, checkpoint: a, otherShape: y, otherCheckpoint: b) }
                if base.dtype(name) != other.dtype(name) {
                    throw SoupError.dtypeMismatch(name: name, dtype: base.dtype(name), checkpoint: a, otherDtype: other.dtype(name), otherCheckpoint: b)
                }
            }
        }
        let hf = (base.contents.huggingFaceConfig.mapValues(canonical), other.contents.huggingFaceConfig.mapValues(canonical))
        if let key = firstDifference(hf.0, hf.1) {
            throw SoupError.configMismatch(file: "config.json", key: key, value: hf.0[key] ?? "absent", checkpoint: a,
                                           otherValue: hf.1[key] ?? "absent", otherCheckpoint: b)
        }
        if let key = firstDifference(base.modelSection, other.modelSection) {
            throw SoupError.configMismatch(file: "run.yaml", key: key, value: base.modelSection[key] ?? "absent", checkpoint: a,
                                           otherValue: other.modelSection[key] ?? "absent", otherCheckpoint: b)
        }
    }

    static func firstDifference(_ x: [String: String], _ y: [String: String]) -> String? {
        Set(x.keys).union(y.keys).sorted().first { x[$0] != y[$0] }
    }

    /// A JSON value as comparable text (numbers, strings, arrays, null, nested objects).
    static func canonical(_ value: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .fragmentsAllowed]) else {
            return "\(value)"
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// What a greedy soup chose.
public struct GreedySoup {
    public var contents: CheckpointContents
    /// Every input with its validation loss, best first.
    public var ranked: [(checkpoint: URL, loss: Double)]
    /// The inputs in the soup, in the order they joined (the best first).
    public var kept: [URL]
    /// The soup's validation loss.
    public var loss: Double
}

/// Float64 sums Σ wᵢ·θᵢ of the ingredients added so far, in the base ingredient's tensor order.
struct SoupAccumulator {
    let base: SoupIngredient
    private var model: [[Double]]
    private var optimizer: [[Double]]
    private(set) var totalWeight = 0.0

    init(base: SoupIngredient) {
        self.base = base
        model = base.contents.model.entries.map { [Double](repeating: 0, count: $0.tensor.count) }
        optimizer = base.contents.optimizer.entries.map { [Double](repeating: 0, count: $0.tensor.count) }
    }

    /// Adds `weight`·θ of `ingredient` after checking it matches the base.
    mutating func add(_ ingredient: SoupIngredient, weight: Double) throws {
        try ModelSoup.verify(ingredient, against: base)
        Self.accumulate(&model, base.contents.model, ingredient.contents.model, weight)
        Self.accumulate(&optimizer, base.contents.optimizer, ingredient.contents.optimizer, weight)
        totalWeight += weight
    }

    private static func accumulate(_ sums: inout [[Double]], _ order: StateDict, _ tensors: StateDict, _ weight: Double) {
        for (index, name) in order.names.enumerated() {
            tensors[name]!.withUnsafeBufferPointer { values in
                sums[index].withUnsafeMutableBufferPointer { sum in
                    for i in 0..<values.count { sum[i] += weight * Double(values[i]) }
                }
            }
        }
    }

    /// The averaged parameters the soup would have with `ingredient` added (the accumulator is
    /// unchanged); the same arithmetic as `add` then `contents`.
    func averagedModel(adding ingredient: SoupIngredient, weight: Double) throws -> StateDict {
        var trial = self
        try trial.add(ingredient, weight: weight)
        return trial.contents().model
    }

    /// The soup: averaged tensors (copied ones from the base) with the base's metadata.
    func contents() -> CheckpointContents {
        var result = base.contents
        result.model = average(model, base.contents.model)
        result.optimizer = average(optimizer, base.contents.optimizer)
        return result
    }

    private func average(_ sums: [[Double]], _ order: StateDict) -> StateDict {
        StateDict(order.entries.enumerated().map { index, entry in
            guard ModelSoup.combination(dtype: base.dtype(entry.name)) == .average else { return (entry.name, entry.tensor) }
            return (entry.name, Tensor(shape: entry.tensor.shape, scalars: sums[index].map { Float($0 / totalWeight) }))
        })
    }
}
