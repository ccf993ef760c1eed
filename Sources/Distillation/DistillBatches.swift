import Foundation
import Training

/// The token batches of a distillation: the training split's sampler, exactly as training
/// takes it (`TrainingData.trainBatch`), global batch `train.global_batch` split over the data
/// ranks, one global batch per step in every stage. `samplesSeen` is the cursor a checkpoint
/// saves, so a resumed run takes the batches an uninterrupted one would.
public final class DistillBatches {
    public let data: TrainingData
    /// Global samples taken so far (every rank the same).
    public internal(set) var samplesSeen = 0
    /// The targets (next tokens) of the last batch `next()` gave, this rank's sequences.
    public private(set) var lastTargets: [Int32] = []

    public init(data: TrainingData) { self.data = data }

    /// This rank's `localBatch × length` tokens of the next global batch: whole sequences,
    /// whatever positions the rank holds (the distiller takes its own).
    public func next() -> [Int32] {
        let batch = data.wholeTrainBatch(samplesSeen: samplesSeen)
        samplesSeen += data.globalBatch
        lastTargets = batch.targets
        return batch.tokens
    }
}
