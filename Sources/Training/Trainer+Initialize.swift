import Checkpointing
import Foundation

extension Trainer {
    /// Starts this new run from the parameters of `checkpoint` (fine-tuning, e.g. the
    /// ingredients of a model soup): the model's weights are replaced, while the optimizer
    /// moments, the step and the data cursor start from zero under this run's own config
    /// (seed, schedule). Every rank reads the checkpoint itself, so it must be readable on every
    /// node. Call before `run(resume: false)`. Throws `ModelError` naming a tensor the
    /// checkpoint lacks or has in another shape.
    public func initializeParameters(from checkpoint: URL) throws {
        let contents = try CheckpointStore.read(checkpoint)
        try model.parameters.load(contents.model, source: checkpoint.path, global: model.globalDeclarations)
    }
}
