import ArgumentParser
import Checkpointing
import Foundation
import Kernels
import Models
import TensorCore
import Training
import TrainingConfig

/// `tessera generate`: the prompt through the model once (prefill), then one token at a time
/// against a KV cache (`InferenceSession`); Mamba-2 layers (a student) keep their recurrent
/// state instead, constant in the context. Under mpirun or `tessera launch` every attention
/// layer's cache is sharded over the ranks and every rank holds the whole recurrent state of
/// the Mamba-2 layers (replicated: it is small and position-free); they all compute the same
/// logits bit for bit, sample the same tokens with the same seed, and rank 0 prints.
struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sample text from a checkpoint (byte-level models) with a KV cache, sharded over the ranks under mpirun or tessera launch.")

    @Option(help: "A run directory (its newest complete checkpoint) or a checkpoint directory.")
    var checkpoint: String

    @Option(help: "Text to continue.")
    var prompt = "ROMEO:"

    @Option(parsing: .unconditional, help: "Bytes to generate (at least 1).")
    var tokens = 200

    @Option(parsing: .unconditional, help: "Sampling temperature (0: greedy).")
    var temperature = 0.8

    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "Sample among the K most likely bytes (0: all of them).")
    var topK = 0

    @Option(help: "Sampling seed (every rank uses it, so all pick the same bytes).")
    var seed: UInt64 = 1

    @Option(parsing: .unconditional, help: "Kernel threads per rank.")
    var threads = 1

    @OptionGroup var world: WorldOptions

    func validate() throws {
        guard tokens >= 1 else { throw ValidationError("--tokens \(tokens) must be at least 1") }
        guard topK >= 0 else { throw ValidationError("--top-k \(topK) must be 0 (all) or a positive number of tokens") }
        guard threads >= 1 else { throw ValidationError("--threads \(threads) must be at least 1") }
        guard temperature >= 0, temperature.isFinite else {
            throw ValidationError("--temperature \(temperature) must be 0 (greedy) or a positive number")
        }
        guard !prompt.isEmpty else { throw ValidationError("--prompt must not be empty") }
    }

    func run() throws {
        let (url, note) = try CheckpointArgument.resolve(checkpoint)
        let rank = ProcessEnvironment.worldRank ?? 0
        if let note, rank == 0 { try? FileHandle.standardError.write(contentsOf: Data("tessera: \(note)\n".utf8)) }
        let contents = try CheckpointStore.read(url)
        let config = try RunConfig(resolvedYAML: contents.runConfig, source: url.path + "/run.yaml")
        let vocab = config.model.vocabSize
        guard topK <= vocab else {
            throw CommandLineError.topKAboveVocabulary(topK: topK, vocabulary: vocab)
        }
        let comm = try world.makeWorld(defaultTimeout: config.parallel.timeoutSeconds, seal: config.parallel.tcpSeal)
        let model = try TransformerLM(config: config.modelConfig, seed: 0)
        try model.parameters.load(contents.model, source: url.path)
        let session = try InferenceSession(model: model, communicator: comm.size > 1 ? comm : nil, threads: KernelThreads(threads))
        var sampler = TokenSampler(temperature: temperature, topK: topK, seed: seed)
        var logits = try session.prefill(tokens: Array(prompt.utf8).map(Int32.init))
        var generated: [UInt8] = []
        for step in 0..<tokens {
            let next = sampler.next(logits)
            generated.append(UInt8(truncatingIfNeeded: next))
            if step + 1 < tokens { logits = try session.decode(token: Int32(next)) }
        }
        if comm.size > 1 {
            // Which share of the cache each rank ended with (one small exchange, after the text is decided).
            let held = try comm.allGather(Int64(session.cachedPositions)).map(String.init).joined(separator: ", ")
            if comm.rank == 0 {
                let mamba = model.config.mambaLayers.count, attention = model.config.attentionLayers.count
                let replicated = "the Mamba-2 layers' recurrent state (\(mamba) of \(model.config.layers) layers) is replicated on every rank"
                let line = attention == 0
                    ? "tessera: every layer is Mamba-2: no KV cache to shard; \(replicated)\n"
                    : "tessera: KV cache sharded over \(comm.size) ranks in blocks of \(session.plan.blockSize) positions: they hold \(held) of \(session.position) positions"
                        + (mamba > 0 ? "; \(replicated)" : "") + "\n"
                try? FileHandle.standardError.write(contentsOf: Data(line.utf8))
            }
        }
        if comm.rank == 0 { print(prompt + String(decoding: generated, as: UTF8.self)) }
    }
}
