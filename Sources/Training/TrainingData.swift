import Collectives
import Foundation
import Models
import TokenData

/// The batches of a run: which samples each step takes (the sampler over the train split),
/// this rank's share of them, and the fixed validation batches.
///
/// Global batch `globalBatch` sequences of `length` tokens per step; data rank d of D takes
/// its contiguous `globalBatch / D` of them. With S > 1 sequence ranks, sequence rank s keeps
/// only the tokens (and targets) at its zigzag positions (`SequenceSharding`), `localLength` of
/// each sample; the model pass gets those `positions`.
public final class TrainingData {
    public let train: TokenDataset
    public let validation: TokenDataset
    public let length: Int
    public let globalBatch: Int
    public let localBatch: Int
    let sampler: Sampler
    let dataRank: Int
    let dataRanks: Int
    /// Tokens of each sample this rank holds, and their global positions.
    public let localLength: Int
    public let positions: [Int]

    public init(directory: String, length: Int, globalBatch: Int, seed: Int, dataRank: Int, dataRanks: Int,
                sequenceRank: Int = 0, sequenceRanks: Int = 1) throws {
        train = try TokenDataset(directory: directory, split: "train")
        validation = try TokenDataset(directory: directory, split: "val")
        if train.sampleCount(length: length) < globalBatch {
            throw DataError.tooFewTokens(directory: directory, split: "train", tokens: train.tokenCount, needed: globalBatch * length + 1,
                                         requirement: "train.global_batch × data.seq_len + 1")
        }
        if validation.sampleCount(length: length) < 1 {
            throw DataError.tooFewTokens(directory: directory, split: "val", tokens: validation.tokenCount, needed: length + 1,
                                         requirement: "data.seq_len + 1")
        }
        self.length = length
        self.globalBatch = globalBatch
        localBatch = globalBatch / dataRanks
        self.dataRank = dataRank
        self.dataRanks = dataRanks
        positions = SequenceSharding.positions(length: length, ranks: sequenceRanks, rank: sequenceRank)
        localLength = positions.count
        sampler = Sampler(sampleCount: train.sampleCount(length: length), seed: UInt64(seed))
    }

    public var tokensPerStep: Int { globalBatch * length }

    /// This rank's inputs and targets of the step that starts at global sample `samplesSeen`,
    /// in pass order for passes of `microBatch` sequences (`wholeTrainBatch`).
    public func trainBatch(samplesSeen: Int, microBatch: Int? = nil) -> (tokens: [Int32], targets: [Int32]) {
        restricted(wholeTrainBatch(samplesSeen: samplesSeen, microBatch: microBatch))
    }

    /// This rank's sequences of that step, whole (every position), in pass order
    /// (`Sampler.indices`: a pass's sequences over the data ranks are the same on any layout,
    /// and so are a mixture of experts' routing statistics, taken per pass).
    public func wholeTrainBatch(samplesSeen: Int, microBatch: Int? = nil) -> (tokens: [Int32], targets: [Int32]) {
        let samples = sampler.indices(samplesSeen: samplesSeen, globalBatch: globalBatch, rank: dataRank, ranks: dataRanks, microBatch: microBatch)
        return train.batch(samples: samples, length: length)
    }

    /// The tokens and targets of a batch at this rank's positions.
    func restricted(_ batch: (tokens: [Int32], targets: [Int32])) -> (tokens: [Int32], targets: [Int32]) {
        guard localLength != length else { return batch }
        let samples = batch.tokens.count / length
        var tokens = [Int32](), targets = [Int32]()
        tokens.reserveCapacity(samples * localLength); targets.reserveCapacity(samples * localLength)
        for s in 0..<samples {
            for p in positions {
                tokens.append(batch.tokens[s * length + p]); targets.append(batch.targets[s * length + p])
            }
        }
        return (tokens, targets)
    }

    /// Validation batches available (whole global batches, at least 1).
    public var validationBatchCount: Int { max(1, validation.sampleCount(length: length) / globalBatch) }

    /// This rank's share of validation batch `index` (windows in order, wrapping around).
    public func validationBatch(_ index: Int) -> (tokens: [Int32], targets: [Int32]) {
        let count = validation.sampleCount(length: length)
        let first = index * globalBatch + dataRank * localBatch
        return restricted(validation.batch(samples: (0..<localBatch).map { (first + $0) % count }, length: length))
    }
}
