import Collectives
import Kernels
import TensorCore

/// What an inference call hands the layers: the position of its first row, the kernel threads,
/// the ranks sharing the KV cache and their plan, and scratch shared by all layers.
public final class DecodeContext {
    public let threads: KernelThreads
    /// The ranks that share the caches (nil on one rank).
    public let communicator: Communicator?
    public let plan: KVShardPlan
    public let scratch = Scratch()
    /// Global position of the first row of the current call.
    public internal(set) var position = 0

    init(threads: KernelThreads, communicator: Communicator?, plan: KVShardPlan) {
        self.threads = threads
        self.communicator = communicator
        self.plan = plan
    }
}

/// A sequence mixer that can also run incrementally: a prompt, then one token at a time,
/// against state it keeps between calls (attention: its KV cache). Beside, not instead of,
/// the training passes of `LayerComponent`, whose caches it never touches.
public protocol IncrementalSequenceMixer: LayerComponent {
    /// Fresh state (an empty cache) using this component's weights in `parameters`, where its
    /// names carry `prefix`.
    func makeIncrementalState(parameters: ParameterSet, prefix: String, plan: KVShardPlan) -> IncrementalMixerState
}

/// One layer's incremental state.
public protocol IncrementalMixerState: AnyObject {
    /// out (P, d) += mixer(x (P, d)) for the prompt's positions 0..<P (the state is empty).
    func prefill(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, count: Int, context: DecodeContext) throws
    /// out (1, d) += mixer(x (1, d)) for one token at `context.position`, after every earlier one.
    func decode(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, context: DecodeContext) throws
    /// Makes the state what `positions` earlier tokens would leave, filled with seeded random
    /// values instead of running them (attention: this rank's share of the keys and values,
    /// room for `extra` more; Mamba-2: its window and scan state), so a benchmark can time the
    /// next token at a long context. The state must be empty.
    func fillSynthetic(positions: Int, extra: Int, rng: inout RNG)
    /// Positions this rank holds, and the bytes they take.
    var cachedPositions: Int { get }
    var cacheBytes: Int { get }
    /// Bytes of the positions held (attention: K and V of `cachedPositions`, without spare
    /// capacity; Mamba-2: the whole state).
    var usedBytes: Int { get }
}

/// A channel mixer that acts on each row alone (SwiGLU; a mixture of experts, dropless), so
/// inference can run it on any rows (one token) without touching the training cache.
public protocol RowwiseChannelMixer: LayerComponent {
    /// out (rows, d) += mixer(x (rows, d)) with this component's weights in `parameters` (names
    /// carrying `prefix`). Throws when an exchange between the context's ranks fails.
    func forwardRows(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, rows: Int,
                     parameters: ParameterSet, prefix: String, context: DecodeContext) throws
}

/// Why an inference session refuses a call.
public enum InferenceError: Error, Equatable, CustomStringConvertible {
    case emptyPrompt
    case tokenOutOfRange(token: Int32, vocabSize: Int)
    case alreadyStarted(positions: Int)
    case unsupportedLayer(layer: Int, kind: String)
    case invalidShardPlan(String)

    public var description: String {
        switch self {
        case .emptyPrompt: return "the prompt has no tokens; prefill needs at least one"
        case let .tokenOutOfRange(token, vocab): return "token \(token) is outside the vocabulary 0..<\(vocab)"
        case let .alreadyStarted(positions): return "prefill needs an empty session, this one holds \(positions) positions; start a new session"
        case let .unsupportedLayer(layer, kind): return "layer \(layer): its \(kind) cannot run incrementally (it declares no incremental form)"
        case let .invalidShardPlan(message): return "KV cache sharding: \(message)"
        }
    }
}
