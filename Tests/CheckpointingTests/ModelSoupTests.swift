import Testing
import Checkpointing
import Foundation
import TensorCore
import _TestSupport

@Suite struct ModelSoupTests {
    /// A small checkpoint whose tensors are drawn from `seed` (moments non-negative where AdamW's are).
    static func ingredient(_ seed: UInt64, path: String = "", shapes: [(String, [Int])] = [("a.weight", [3, 4]), ("b.weight", [5])],
                           config: [String: Any] = ["hidden_size": 4, "model_type": "llama"], dtypes: [String: String] = [:]) -> SoupIngredient {
        var rng = RNG(seed: seed)
        var model: [(String, Tensor)] = [], optimizer: [(String, Tensor)] = []
        for (name, shape) in shapes {
            model.append((name, Tensor(randomNormal: shape, using: &rng)))
            optimizer.append((name + ".exp_avg", Tensor(randomNormal: shape, std: 0.1, using: &rng)))
            let squares = Tensor(randomNormal: shape, using: &rng)
            optimizer.append((name + ".exp_avg_sq", Tensor(shape: shape, scalars: squares.scalars.map { $0 * $0 })))
        }
        let contents = CheckpointContents(model: StateDict(model), optimizer: StateDict(optimizer), shards: [:],
                                          state: TrainerState(step: Int(seed), seed: seed, samplesSeen: 0, tokensSeen: 0, configHash: "h\(seed)",
                                                              dataParallel: 1, sequenceParallel: 1),
                                          runConfig: "run:\n  dir: r\(seed)\n", huggingFaceConfig: config)
        return SoupIngredient(checkpoint: URL(fileURLWithPath: path.isEmpty ? "/ckpt/\(seed)" : path), contents: contents, dtypes: dtypes,
                              modelSection: ["model.d_model": "4"])
    }

    /// `load` for in-memory ingredients, keyed by path.
    static func loader(_ ingredients: [SoupIngredient]) -> (URL) throws -> SoupIngredient {
        let byPath = Dictionary(uniqueKeysWithValues: ingredients.map { ($0.checkpoint.path, $0) })
        return { url in byPath[url.path]! }
    }

    @Test(arguments: [1, 3, 7])
    func aSoupOfCopiesOfOneCheckpointIsThatCheckpointBitwise(copies: Int) throws {
        let one = Self.ingredient(11)
        let urls = (0..<copies).map { _ in one.checkpoint }
        let uniform = try ModelSoup.uniform(urls, load: Self.loader([one]))
        #expect(uniform.model == one.contents.model)
        #expect(uniform.optimizer == one.contents.optimizer)
        let weights = (0..<copies).map { _ in 1 / Double(copies) }
        let weighted = try ModelSoup.weighted(urls, weights: weights, load: Self.loader([one]))
        #expect(weighted.model == one.contents.model)
    }

    @Test func uniformOfTwoIsTheElementwiseMeanAndKeepsTheFirstInputsState() throws {
        let a = Self.ingredient(1), b = Self.ingredient(2)
        let soup = try ModelSoup.uniform([a.checkpoint, b.checkpoint], load: Self.loader([a, b]))
        for (name, tensor) in soup.model.entries + soup.optimizer.entries {
            let x = (a.contents.model[name] ?? a.contents.optimizer[name])!.scalars
            let y = (b.contents.model[name] ?? b.contents.optimizer[name])!.scalars
            #expect(tensor.scalars == zip(x, y).map { Float((Double($0) + Double($1)) / 2) }, "\(name)")
        }
        #expect(soup.state == a.contents.state)
        #expect(soup.runConfig == a.contents.runConfig)
    }

    @Test func weightedIsTheWeightedSum() throws {
        let a = Self.ingredient(1), b = Self.ingredient(2), c = Self.ingredient(3)
        let weights = [0.5, 0.25, 0.25]
        let soup = try ModelSoup.weighted([a.checkpoint, b.checkpoint, c.checkpoint], weights: weights, load: Self.loader([a, b, c]))
        let x = a.contents.model["a.weight"]!.scalars, y = b.contents.model["a.weight"]!.scalars, z = c.contents.model["a.weight"]!.scalars
        let expected = (0..<x.count).map { Float(0.5 * Double(x[$0]) + 0.25 * Double(y[$0]) + 0.25 * Double(z[$0])) }
        #expect(soup.model["a.weight"]!.scalars == expected)
    }

    @Test func integerTensorsAreCopiedFromTheBaseNotAveraged() throws {
        let dtypes = ["b.weight": "I64"]
        let a = Self.ingredient(1, dtypes: dtypes), b = Self.ingredient(2, dtypes: dtypes)
        let soup = try ModelSoup.uniform([a.checkpoint, b.checkpoint], load: Self.loader([a, b]))
        #expect(soup.model["b.weight"] == a.contents.model["b.weight"])
        #expect(soup.model["a.weight"] != a.contents.model["a.weight"])
        #expect(ModelSoup.combination(dtype: "F32") == .average && ModelSoup.combination(dtype: "BF16") == .average)
        #expect(ModelSoup.combination(dtype: "I64") == .copyFromBase && ModelSoup.combination(dtype: "BOOL") == .copyFromBase)
    }

    @Test func weightsMustBeNonNegativeAndSumToOne() throws {
        let urls = [URL(fileURLWithPath: "/x"), URL(fileURLWithPath: "/y")]
        #expect(throws: SoupError.weightsDoNotSumToOne(sum: 0.9)) { try ModelSoup.checkWeights([0.5, 0.4], inputs: urls) }
        #expect(throws: SoupError.negativeWeight(weight: -0.5, input: "/y")) { try ModelSoup.checkWeights([1.5, -0.5], inputs: urls) }
        #expect(throws: SoupError.weightCount(weights: 1, inputs: 2)) { try ModelSoup.checkWeights([1], inputs: urls) }
        try ModelSoup.checkWeights([0.5, 0.5 + 5e-7], inputs: urls)   // within 1e-6
        #expect(SoupError.weightsDoNotSumToOne(sum: 0.9).description.contains("0.9"))
    }

    @Test func aShapeMismatchNamesTheTensorBothShapesAndBothCheckpoints() throws {
        let a = Self.ingredient(1), b = Self.ingredient(2, shapes: [("a.weight", [3, 4]), ("b.weight", [6])])
        let error = #expect(throws: SoupError.self) { try ModelSoup.uniform([a.checkpoint, b.checkpoint], load: Self.loader([a, b])) }
        #expect(error == .shapeMismatch(name: "b.weight", shape: [5], checkpoint: "/ckpt/1", otherShape: [6], otherCheckpoint: "/ckpt/2"))
        let text = error?.description ?? ""
        #expect(text.contains("b.weight") && text.contains("[5]") && text.contains("[6]") && text.contains("/ckpt/1") && text.contains("/ckpt/2"))
    }

    @Test func aMissingTensorAConfigKeyAndADtypeAreNamed() throws {
        let a = Self.ingredient(1)
        let fewer = Self.ingredient(2, shapes: [("a.weight", [3, 4])])
        #expect(throws: SoupError.tensorMissing(name: "b.weight", kind: "model", presentIn: "/ckpt/1", absentFrom: "/ckpt/2")) {
            try ModelSoup.verify(fewer, against: a)
        }
        let wider = Self.ingredient(3, config: ["hidden_size": 8, "model_type": "llama"])
        #expect(throws: SoupError.configMismatch(file: "config.json", key: "hidden_size", value: "4", checkpoint: "/ckpt/1",
                                                 otherValue: "8", otherCheckpoint: "/ckpt/3")) { try ModelSoup.verify(wider, against: a) }
        var otherRun = Self.ingredient(4)
        otherRun.modelSection["model.d_model"] = "5"
        #expect(throws: SoupError.configMismatch(file: "run.yaml", key: "model.d_model", value: "4", checkpoint: "/ckpt/1",
                                                 otherValue: "5", otherCheckpoint: "/ckpt/4")) { try ModelSoup.verify(otherRun, against: a) }
        let halves = Self.ingredient(5, dtypes: ["a.weight": "F16"])
        #expect(throws: SoupError.dtypeMismatch(name: "a.weight", dtype: "F32", checkpoint: "/ckpt/1", otherDtype: "F16",
                                                otherCheckpoint: "/ckpt/5")) { try ModelSoup.verify(halves, against: a) }
    }

    /// With a loss that is the squared distance to a target, greedy starts from the closest
    /// ingredient, keeps those that bring the mean closer, and never ends above the best.
    @Test func greedyKeepsOnlyIngredientsThatStrictlyImproveTheLoss() throws {
        let a = Self.ingredient(1), b = Self.ingredient(2), c = Self.ingredient(3)
        let target = try ModelSoup.uniform([a.checkpoint, b.checkpoint], load: Self.loader([a, b])).model
        func loss(_ model: StateDict) -> Double {
            var sum = 0.0
            for (name, tensor) in model.entries {
                for (x, y) in zip(tensor.scalars, target[name]!.scalars) { sum += Double(x - y) * Double(x - y) }
            }
            return sum
        }
        var lines: [String] = []
        let greedy = try ModelSoup.greedy([c.checkpoint, a.checkpoint, b.checkpoint], load: Self.loader([a, b, c]), loss: loss) { lines.append($0) }
        // What greedy reports is what its outputs measure, computed here, not by greedy.
        let measured = [c, a, b].enumerated().map { (index: $0.offset, checkpoint: $0.element.checkpoint, loss: loss($0.element.contents.model)) }
            .sorted { ($0.loss, $0.index) < ($1.loss, $1.index) }
        #expect(greedy.ranked.map(\.checkpoint) == measured.map(\.checkpoint) && greedy.ranked.map(\.loss) == measured.map(\.loss))
        #expect(greedy.loss == loss(greedy.contents.model), "the reported loss is the returned soup's")
        #expect(loss(greedy.contents.model) < measured[0].loss, "the soup beats its best ingredient")
        #expect(Set(greedy.kept) == [a.checkpoint, b.checkpoint], "c moves the mean away from a and b's")
        #expect(greedy.contents.model == target, "the soup is the uniform soup of the kept two")
        #expect(greedy.loss < 1e-9)
        #expect(lines.contains { $0.hasPrefix("left out /ckpt/3") })
        #expect(lines.contains { $0.hasPrefix("kept") })
    }

    @Test func anExistingOutputIsRefused() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        try OutputDirectory.ensureEmpty(directory.url)   // empty: fine
        try OutputDirectory.ensureEmpty(directory.url.appendingPathComponent("new"))
        try Data("x".utf8).write(to: directory.url.appendingPathComponent("DONE"))
        #expect(throws: SoupError.outputNotEmpty(path: directory.path)) { try OutputDirectory.ensureEmpty(directory.url) }
    }
}
