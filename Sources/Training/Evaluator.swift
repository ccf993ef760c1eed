import Collectives
import Models

/// Validation loss of a model over fixed batches, all data ranks taking part.
public struct Evaluator {
    public let model: TransformerLM
    public let data: TrainingData
    public let comm: Communicator
    /// Under `parallel.reduction: ordered`: passes of this many sequences whose losses are
    /// added in global order, so any number of data ranks gives the same bits (nil: one pass
    /// per rank and batch, all-reduced).
    public let orderedMicroBatch: Int?

    public init(model: TransformerLM, data: TrainingData, comm: Communicator, orderedMicroBatch: Int? = nil) {
        self.model = model
        self.data = data
        self.comm = comm
        self.orderedMicroBatch = orderedMicroBatch
    }

    /// Mean cross-entropy (nats per token; no auxiliary losses) over validation batches
    /// 0..<batches. Collective over `comm` (and over the model's grid, whose MoE layers
    /// exchange routing statistics and tokens).
    public func validationLoss(batches: Int) throws -> Double {
        if let orderedMicroBatch { return try orderedValidationLoss(batches: batches, microBatch: orderedMicroBatch) }
        var total = 0.0
        for b in 0..<batches {
            let batch = data.validationBatch(b)
            total += try model.lossSum(tokens: batch.tokens, targets: batch.targets, batch: data.localBatch, length: data.localLength,
                                   positions: data.positions)
        }
        let global = try comm.allReduce(Float(total), op: .sum)
        return Double(global) / Double(batches * data.tokensPerStep)
    }

    /// Rank r holds sequences r·L ..< (r+1)·L of each batch (L = the local batch): its passes'
    /// losses, gathered rank after rank, are in global order within a batch.
    private func orderedValidationLoss(batches: Int, microBatch m: Int) throws -> Double {
        let passes = data.localBatch / m, span = m * data.localLength
        var sums: [Double] = []
        for b in 0..<batches {
            let batch = data.validationBatch(b)
            for pass in 0..<passes {
                let rows = (pass * span)..<((pass + 1) * span)
                sums.append(try model.lossSum(tokens: Array(batch.tokens[rows]), targets: Array(batch.targets[rows]), batch: m,
                                              length: data.localLength, positions: data.positions))
            }
        }
        let n = comm.size, count = sums.count
        let all = try comm.allGather(sums)
        var total = 0.0
        for b in 0..<batches {
            for r in 0..<n { for pass in 0..<passes { total += all[r * count + b * passes + pass] } }
        }
        return total / Double(batches * data.tokensPerStep)
    }
}
