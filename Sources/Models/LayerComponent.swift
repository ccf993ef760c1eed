import Kernels
import TensorCore

/// A sequence mixer or channel mixer of a decoder block.
///
/// A component declares its parameters (names relative to the block, Hugging Face style),
/// owns the cache its backward pass needs, and implements both passes on (B·T, d) row-major
/// activations. Forward adds its output into the residual stream; backward turns the gradient
/// of the residual stream into the gradient of its input and adds its parameter gradients.
/// A backward call must follow the forward call of the same pass. A component that
/// communicates throws its failed collective (a lost or hung rank): the pass ends there.
public protocol LayerComponent: AnyObject {
    /// Parameters under names relative to the block (e.g. `self_attn.q_proj.weight`): the ones
    /// this rank holds.
    var declarations: [ParameterDeclaration] { get }
    /// Every parameter of the component as one rank holding all of it would declare it (the
    /// same as `declarations` unless parameters are sharded): initialisation draws them in
    /// this order on every layout, and checkpoints hold them all.
    var globalDeclarations: [ParameterDeclaration] { get }
    /// Resolves the component's parameters in `parameters`, where its names carry `prefix`.
    func bind(to parameters: ParameterSet, prefix: String)
    /// out (B·T, d) += component(x (B·T, d)). `x` must stay unchanged until `backward`.
    func forward(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, layer: Int, context: PassContext) throws
    /// dx (B·T, d) = ∂L/∂x (overwritten) from dOut = ∂L/∂out; parameter gradients are added.
    func backward(_ dOut: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, layer: Int, context: PassContext) throws
    /// Forward FLOPs per token of the matrix products (2 per multiply-add).
    var matmulFlopsPerToken: Double { get }
    /// Forward FLOPs per token that grow with the sequence (attention scores and values).
    func sequenceFlopsPerToken(length: Int) -> Double
    /// Capabilities (nil, false or 0 unless the component has them): this sequence mixer as one
    /// that runs incrementally (generation), this channel mixer as one that runs on any rows,
    /// whether its backward pass communicates (expert parallel: gradient reduction must then
    /// not overlap it), and the seconds it spent exchanging tokens between ranks.
    var incremental: IncrementalSequenceMixer? { get }
    var rowwise: RowwiseChannelMixer? { get }
    var backwardCommunicates: Bool { get }
    var exchangeSeconds: Double { get }
}

extension LayerComponent {
    public func sequenceFlopsPerToken(length: Int) -> Double { 0 }
    public var globalDeclarations: [ParameterDeclaration] { declarations }
    public var incremental: IncrementalSequenceMixer? { nil }
    public var rowwise: RowwiseChannelMixer? { nil }
    public var backwardCommunicates: Bool { false }
    public var exchangeSeconds: Double { 0 }
}

extension IncrementalSequenceMixer {
    public var incremental: IncrementalSequenceMixer? { self }
}

extension RowwiseChannelMixer {
    public var rowwise: RowwiseChannelMixer? { self }
}

/// Resolved pointers of one parameter's values and gradient (the parameter set's buffers have
/// stable addresses and outlive the components bound to them).
public struct BoundParameter {
    public private(set) var value: UnsafeMutablePointer<Float>!
    public private(set) var gradient: UnsafeMutablePointer<Float>!

    public init() {}
    public init(_ parameters: ParameterSet, _ name: String) {
        let offset = parameters.entry(name).offset
        value = parameters.values.pointer + offset
        gradient = parameters.gradients.pointer + offset
    }
}

/// Float32 buffers of a component's forward cache, reallocated when the row count or a width
/// changes (a width may depend on the sequence length, as the materialised attention
/// probabilities' does).
public struct ActivationCache {
    private(set) var rows = -1
    private var widths: [Int] = []
    private var buffers: [FloatBuffer] = []

    /// Ensures one buffer per width (each `rows × width` floats); returns true when reallocated.
    public init() {}

    @discardableResult
    public mutating func ensure(rows: Int, widths: [Int]) -> Bool {
        guard rows != self.rows || widths != self.widths else { return false }
        buffers = widths.map { FloatBuffer(count: rows * $0) }
        self.rows = rows
        self.widths = widths
        return true
    }

    public subscript(_ i: Int) -> UnsafeMutablePointer<Float> { buffers[i].pointer }
}
