import Collectives
import Kernels
import TensorCore

/// What every component sees during one forward/backward pass: the shape of the batch, the
/// global positions of this rank's tokens, the kernel threads, the process grid, shared
/// scratch, and the hooks of the pass (auxiliary losses, gradient readiness, capture).
///
/// One context is kept per (batch, length, positions) and reused across steps; the hooks are
/// set anew by each pass. Not thread-safe: one pass at a time.
public final class PassContext {
    /// Samples in this rank's batch.
    public let batch: Int
    /// Tokens of each sample on this rank.
    public let length: Int
    /// Global position (within its sample) of each of the `length` tokens. Contiguous
    /// `0..<length` unless the sequence is sharded (zigzag chunks are not contiguous).
    public let positions: [Int]
    public let threads: KernelThreads
    /// The number format of the linear layers' and flash attention's products (the model's
    /// `precision`, set before each pass); norms, softmax and everything else stay Float32.
    public internal(set) var precision: ComputePrecision = .fp32
    /// Mixture-of-experts routing over this rank's tokens only (the model's `localRouting`).
    public internal(set) var localRouting = false
    /// The layout, for components that communicate (sequence-parallel attention, expert
    /// dispatch); nil when the model runs on one rank.
    public let grid: ProcessGrid?
    /// Backward-pass buffers shared by all layers (never holding state between calls).
    public let scratch = Scratch()
    /// Auxiliary losses the components add during the forward pass (MoE balance and z-loss).
    public let auxiliaryLosses = AuxiliaryLosses()
    /// Gradient scale of the pass: ∂(scale · Σ loss)/∂θ is what backward accumulates.
    public internal(set) var gradientScale: Float = 1
    /// Called with each parameter range whose gradient is final, in the order the backward pass
    /// finishes them; nil in forward-only passes.
    public internal(set) var ready: ((Range<Int>) -> Void)?
    /// Receives layer inputs, outputs and attention matrices when set (distillation).
    public internal(set) var capture: CaptureHook?
    /// What each mixture-of-experts layer's routing did in the last forward pass, by layer.
    public internal(set) var routing: [Int: RoutingSummary] = [:]
    /// Clears what the previous pass left (losses, routing).
    func resetPass() {
        auxiliaryLosses.reset()
        routing.removeAll(keepingCapacity: true)
    }

    public var rows: Int { batch * length }

    public init(batch: Int, length: Int, positions: [Int]? = nil, threads: KernelThreads = .single, grid: ProcessGrid? = nil) {
        precondition(positions == nil || positions!.count == length, "PassContext: \(positions!.count) positions for length \(length)")
        self.batch = batch
        self.length = length
        self.positions = positions ?? Array(0..<length)
        self.threads = threads
        self.grid = grid
    }

    func matches(batch: Int, length: Int, positions: [Int]?, threads: KernelThreads, grid: ProcessGrid?) -> Bool {
        self.batch == batch && self.length == length && self.positions == (positions ?? Array(0..<length))
            && self.threads == threads && self.grid === grid
    }
}

/// Float buffers by name, grown on demand and shared by every layer of a pass.
public final class Scratch {
    private var buffers: [String: FloatBuffer] = [:]

    public init() {}

    /// A buffer of at least `count` floats (contents unspecified).
    public func buffer(_ name: String, count: Int) -> UnsafeMutablePointer<Float> {
        if let existing = buffers[name], existing.count >= count { return existing.pointer }
        let fresh = FloatBuffer(count: count)
        buffers[name] = fresh
        return fresh.pointer
    }
}

/// Auxiliary losses of one forward pass, by name and layer (e.g. "moe_aux", layer 3). Their
/// gradients are the adding component's business; the totals are reported and logged.
public final class AuxiliaryLosses {
    public private(set) var values: [String: [Int: Double]] = [:]

    public func add(_ name: String, layer: Int, value: Double) { values[name, default: [:]][layer, default: 0] += value }

    /// Σ over layers of each named loss.
    public var totals: [String: Double] { values.mapValues { $0.values.reduce(0, +) } }

    func reset() { values.removeAll(keepingCapacity: true) }
}

/// What a capture hook is handed.
public enum CapturePoint: String, Sendable {
    /// The residual stream entering the block, (B·T, d).
    case blockInput
    /// The normalised input of the sequence mixer, (B·T, d).
    case sequenceMixerInput
    /// What the sequence mixer adds to the residual stream, (B·T, d).
    case sequenceMixerOutput
    /// The residual stream leaving the block, (B·T, d).
    case blockOutput
    /// Attention probabilities (B, H, T, T), causal (entries above the diagonal are 0).
    case attentionProbabilities
    /// A Mamba-2 mixer's materialised mixing matrix (B, H, T, T), D on the diagonal, causal.
    case mixingMatrix
}

/// Called during the forward pass with a layer index, a point, the values (valid only during the
/// call) and their shape.
public typealias CaptureHook = (_ layer: Int, _ point: CapturePoint, _ values: UnsafeBufferPointer<Float>, _ shape: [Int]) -> Void
