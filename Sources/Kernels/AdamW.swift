import CAdamW
import Foundation

/// AdamW with decoupled weight decay, as `torch.optim.AdamW`:
/// p ← p − lr·wd·p; m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
/// p ← p − lr · m̂ / (√v̂ + eps), with bias-corrected m̂ = m / (1−β1ᵗ), v̂ = v / (1−β2ᵗ).
public struct AdamW: Equatable, Sendable {
    public var beta1: Float, beta2: Float, eps: Float, weightDecay: Float

    public init(beta1: Float = 0.9, beta2: Float = 0.95, eps: Float = 1e-8, weightDecay: Float = 0.1) {
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }

    /// One update of `count` parameters at step `t` (1-based). `decay` turns weight decay on
    /// for this range (matrices) or off (norm weights). The gradient used is g · `gradientScale`
    /// (gradient clipping's factor: the same floats as scaling g first, without a pass over it;
    /// g itself is left as it is).
    public func update(parameters p: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
                       m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int,
                       step t: Int, learningRate lr: Float, decay: Bool, gradientScale scale: Float = 1,
                       threads: KernelThreads = .single) {
        let correction1 = 1 - pow(Double(beta1), Double(t)), correction2 = 1 - pow(Double(beta2), Double(t))
        let stepSize = lr / Float(correction1)
        let rootCorrection2 = Float(correction2.squareRoot())
        let shrink = decay ? 1 - lr * weightDecay : 1
        let (b1, b2, e) = (beta1, beta2, eps)
        let wide: Int32 = CPUInfo.current.features.contains(.avx512) ? 1 : 0
        threads.forRanges(count, minimumChunk: 65_536) { range in
            let i = range.lowerBound
            tessera_adamw_update(p + i, g + i, m + i, v + i, range.count, b1, b2, e, scale, shrink, stepSize, rootCorrection2, wide)
        }
    }
}

/// Global-norm gradient clipping (as `torch.nn.utils.clip_grad_norm_`).
public enum GradientClipping {
    /// Σ g² of one buffer: `VectorMath.dot` (Float32 lanes) over chunks of 4,096, each chunk's
    /// sum added in Float64 (a single scalar sum waited on each addition: 1.3% of an MoE bench
    /// step for 10.6M gradients).
    public static func sumOfSquares(_ g: UnsafePointer<Float>, count: Int) -> Double {
        var total = 0.0
        var i = 0
        while i < count {
            let end = min(i + chunkFloats, count)
            let partial = VectorMath.dot(g + i, g + i, count: end - i)
            total += Double(partial)
            i = end
        }
        return total
    }

    /// Floats per chunk of `sumOfSquares`: a chunk's sum alone is `sumOfSquares` of that chunk.
    public static let chunkFloats = 4096

    /// Scale that brings a gradient of global norm `norm` down to `maxNorm` (1 when below).
    public static func scale(norm: Double, maxNorm: Float) -> Float {
        guard maxNorm > 0, norm > Double(maxNorm) else { return 1 }
        return Float(Double(maxNorm) / (norm + 1e-6))
    }
}
