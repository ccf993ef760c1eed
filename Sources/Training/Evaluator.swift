import Collectives
import Models

/// Validation loss of a model over fixed batches, all data ranks taking part.
public struct Evaluator {
    public let model: TransformerLM
    public let data: TrainingData
    public let comm: Communicator

    public init(model: TransformerLM, data: TrainingData, comm: Communicator) {
        self.model = model
        self.data = data
        self.comm = comm
    }

    /// Mean cross-entropy (nats per token; no auxiliary losses) over validation batches
    /// 0..<batches. Collective over `comm` (and over the model's grid, whose MoE layers
    /// exchange routing statistics and tokens).
    public func validationLoss(batches: Int) throws -> Double {
        var total = 0.0
        for b in 0..<batches {
            let batch = data.validationBatch(b)
            total += try model.lossSum(tokens: batch.tokens, targets: batch.targets, batch: data.localBatch, length: data.localLength,
                                   positions: data.positions)
        }
        let global = try comm.allReduce(Float(total), op: .sum)
        return Double(global) / Double(batches * data.tokensPerStep)
    }
}
