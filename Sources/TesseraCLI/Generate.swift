import ArgumentParser
import Checkpointing
import Foundation
import Models
import TensorCore
import Training

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Sample text from a checkpoint (byte-level models).")

    @Option(help: "A run directory (its newest complete checkpoint) or a checkpoint directory.")
    var checkpoint: String

    @Option(help: "Text to continue.")
    var prompt = "ROMEO:"

    @Option(parsing: .unconditional, help: "Bytes to generate (at least 1).")
    var tokens = 200

    @Option(parsing: .unconditional, help: "Sampling temperature (0: greedy).")
    var temperature = 0.8

    @Option(help: "Sampling seed.")
    var seed: UInt64 = 1

    func validate() throws {
        guard tokens >= 1 else { throw ValidationError("--tokens \(tokens) must be at least 1") }
        guard temperature >= 0, temperature.isFinite else {
            throw ValidationError("--temperature \(temperature) must be 0 (greedy) or a positive number")
        }
        guard !prompt.isEmpty else { throw ValidationError("--prompt must not be empty") }
    }

    func run() throws {
        let (url, note) = try CheckpointArgument.resolve(checkpoint)
        if let note { try? FileHandle.standardError.write(contentsOf: Data("tessera: \(note)\n".utf8)) }
        let contents = try CheckpointStore.read(url)
        let config = try RunConfig(resolvedYAML: contents.runConfig, source: url.path + "/run.yaml")
        let model = try TransformerLM(config: config.modelConfig, seed: 0)
        try model.parameters.load(contents.model, source: url.path)
        var context = Array(prompt.utf8).map(Int32.init)
        var rng = RNG(seed: seed)
        let window = config.data.seqLen, vocab = config.model.vocabSize
        var generated: [UInt8] = []
        for _ in 0..<tokens {
            let input = Array(context.suffix(window))
            let logits = model.logits(tokens: input, batch: 1, length: input.count)
            let last = Array(logits[((input.count - 1) * vocab)..<(input.count * vocab)])
            let next = Self.sample(last, temperature: temperature, rng: &rng)
            context.append(Int32(next))
            generated.append(UInt8(truncatingIfNeeded: next))
        }
        print(prompt + String(decoding: generated, as: UTF8.self))
    }

    static func sample(_ logits: [Float], temperature: Double, rng: inout RNG) -> Int {
        guard temperature > 0 else { return logits.indices.max { logits[$0] < logits[$1] }! }
        let maximum = logits.max()!
        let weights = logits.map { exp(Double($0 - maximum) / temperature) }
        var pick = rng.nextUniform() * weights.reduce(0, +)
        for (i, w) in weights.enumerated() {
            pick -= w
            if pick <= 0 { return i }
        }
        return weights.count - 1
    }
}
