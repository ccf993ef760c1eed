import Foundation

/// Linear warm-up to `peak`, then cosine decay to `minimum` at `totalSteps`.
public struct LearningRateSchedule: Equatable, Sendable {
    public var peak: Float, minimum: Float, warmupSteps: Int, totalSteps: Int

    public init(peak: Float, minimum: Float, warmupSteps: Int, totalSteps: Int) {
        self.peak = peak; self.minimum = minimum; self.warmupSteps = warmupSteps; self.totalSteps = totalSteps
    }

    /// Learning rate of step `step` (0-based).
    public func rate(at step: Int) -> Float {
        if step < warmupSteps { return peak * Float(step + 1) / Float(warmupSteps) }
        let span = max(1, totalSteps - warmupSteps)
        let progress = min(1, Double(step - warmupSteps) / Double(span))
        return minimum + Float(0.5 * (1 + cos(.pi * progress))) * (peak - minimum)
    }
}
