import Checkpointing
import Collectives
import Foundation
import Kernels
import Models
import TensorCore
import TrainingConfig

/// Validation loss of candidate parameters for a soup: one model of the ingredients' config,
/// evaluated on one process over fixed validation batches, as `tessera eval` does.
public final class SoupValidator {
    public let data: TrainingData
    public let batches: Int
    let model: TransformerLM
    let comm: Communicator

    /// `config`: an ingredient's run config; `dataDirectory`: token shards whose validation
    /// split is used; `batches`: validation batches of train.global_batch sequences (0: the
    /// whole split).
    public init(config: RunConfig, dataDirectory: String, batches: Int) throws {
        comm = SingleProcessCommunicator()
        data = try TrainingData(directory: dataDirectory, length: config.data.seqLen, globalBatch: config.train.globalBatch,
                                seed: config.train.seed, dataRank: 0, dataRanks: 1)
        model = try TransformerLM(config: config.modelConfig, seed: 0, grid: try ProcessGrid(world: comm, data: 1))
        model.threads = KernelThreads(config.train.threads)
        self.batches = batches > 0 ? batches : data.validationBatchCount
    }

    /// Mean validation cross-entropy (nats per token) of `parameters`.
    public func loss(_ parameters: StateDict, source: String = "soup") throws -> Double {
        try model.parameters.load(parameters, source: source)
        return try Evaluator(model: model, data: data, comm: comm).validationLoss(batches: batches)
    }
}
