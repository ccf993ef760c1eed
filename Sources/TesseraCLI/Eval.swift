import ArgumentParser
import Checkpointing
import Collectives
import Foundation
import Kernels
import Models
import Training
import TrainingConfig

/// `tessera eval`: the validation loss of a checkpoint, data parallel over this job's ranks;
/// with `--logits`, also the logits of the sequences it evaluated, as a NumPy file (to compare
/// a model element by element with another implementation, e.g. its Hugging Face export).
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validation loss and bits per byte of a checkpoint (and, with --logits, the logits of the sequences evaluated).",
        discussion: """
            The validation batches are the split's windows of data.seq_len + 1 tokens in order: sequence s of \
            batch b is window b * train.global_batch + s (wrapping around the split), its inputs the window's first \
            seq_len tokens and its targets the last seq_len.
            --logits FILE writes the model's logits on those inputs as a NumPy .npy file of little-endian float32, \
            shape (sequences, seq_len, vocab_size), sequences = batches * train.global_batch, in that order \
            (numpy.load(FILE) reads it). It runs on one process and writes at most \(Eval.maxLogitsMiB) MiB.
            """)

    /// The most --logits writes: 256 MiB, ample for comparing a model on a few batches, and a
    /// bound on what a forgotten --batches (the whole split) would allocate and write.
    static let maxLogitsMiB = 256

    @Option(help: "A run directory (its newest complete checkpoint) or a checkpoint directory (runs/NAME/checkpoints/step-NNNNNNNN).")
    var checkpoint: String

    @Option(parsing: .unconditional, help: "Validation batches of train.global_batch sequences (0: --set eval.batches=N when given, else the whole validation split).")
    var batches = 0

    @Option(help: ArgumentHelp("Also write the logits of the evaluated sequences to FILE (.npy, float32, (sequences, seq_len, vocab_size)); one process only.",
                               valueName: "FILE"))
    var logits: String?

    func validate() throws {
        if batches < 0 { throw ValidationError("--batches \(batches) must not be negative (0: the whole validation split)") }
        if let logits, logits.isEmpty { throw ValidationError("--logits needs a file name") }
    }

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a config key, e.g. --set data.dir=... (repeatable).", valueName: "key=value"))
    var overrides: [String] = []

    @OptionGroup var world: WorldOptions

    func run() throws {
        let (url, note) = try CheckpointArgument.resolve(checkpoint)
        if let note, ProcessEnvironment.worldRank ?? 0 == 0 { try? FileHandle.standardError.write(contentsOf: Data("tessera: \(note)\n".utf8)) }
        let contents = try CheckpointStore.read(url)
        let saved = try RunConfig(resolvedYAML: contents.runConfig, source: url.appendingPathComponent("run.yaml").path)
        var rebalanced = saved
        rebalanced.parallel.data = 0   // however many ranks this evaluation runs on
        let resolved = try rebalanced.applying(overrides)
        try Matmul.select(resolved.gemmImplementation)
        let comm = try world.makeWorld(defaultTimeout: resolved.parallel.timeoutSeconds, seal: resolved.parallel.tcpSeal)
        if logits != nil, comm.size > 1 { throw CommandLineError.logitsNeedOneProcess(ranks: comm.size) }
        let kernelLines = try KernelSelection.startLines(comm: comm)
        if comm.rank == 0 { kernelLines.forEach { print($0) } }
        guard resolved.train.globalBatch % comm.size == 0 else {
            throw TrainingError.batchDoesNotDivide(source: "\(checkpoint)/run.yaml", globalBatch: resolved.train.globalBatch, dataRanks: comm.size)
        }
        let data = try TrainingData(directory: resolved.data.dir, length: resolved.data.seqLen, globalBatch: resolved.train.globalBatch,
                                    seed: resolved.train.seed, dataRank: comm.rank, dataRanks: comm.size)
        // Every rank holds the whole model; MoE layers still see the global batch (capacity, statistics).
        let model = try TransformerLM(config: resolved.modelConfig, seed: 0, grid: try ProcessGrid(world: comm, data: comm.size))
        model.threads = KernelThreads(resolved.train.threads)
        try model.parameters.load(contents.model, source: url.path)
        // --batches, else eval.batches when --set gives it, else the whole split.
        let count = batches > 0 ? batches : resolved.overridden.contains("eval.batches") ? resolved.eval.batches : data.validationBatchCount
        if let logits { try writeLogits(model: model, data: data, batches: count, to: logits) }
        let loss = try Evaluator(model: model, data: data, comm: comm).validationLoss(batches: count)
        if comm.rank == 0 {
            print(String(format: "checkpoint %@ (step %d): validation loss %.4f nats/byte, %.4f bits/byte over %d sequences",
                         url.path, contents.state.step, loss, loss / log(2), count * data.globalBatch))
        }
    }

    /// The logits (sequences, seq_len, vocab) of validation batches 0..<batches, one process.
    func writeLogits(model: TransformerLM, data: TrainingData, batches: Int, to path: String) throws {
        let sequences = batches * data.globalBatch, vocab = model.config.vocabSize
        let bytes = Double(sequences) * Double(data.length) * Double(vocab) * 4
        guard bytes <= Double(Self.maxLogitsMiB << 20) else {
            throw CommandLineError.logitsTooLarge(path: path, sequences: sequences, length: data.length, vocab: vocab,
                                                  mebibytes: bytes / 1_048_576, limit: Self.maxLogitsMiB)
        }
        var values: [Float] = []
        values.reserveCapacity(sequences * data.length * vocab)
        for b in 0..<batches {
            let batch = data.validationBatch(b)
            values += try model.logits(tokens: batch.tokens, batch: data.localBatch, length: data.localLength, positions: data.positions)
        }
        try NumpyArrayFile.write(values, shape: [sequences, data.length, vocab], to: URL(fileURLWithPath: path))
        print("wrote the logits of \(sequences) sequences × \(data.length) positions × \(vocab) tokens to \(path)")
    }
}
