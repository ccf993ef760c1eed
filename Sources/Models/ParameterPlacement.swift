import Collectives

/// Where a parameter lives across the process grid.
///
/// Gradient reduction, the clipping norm, the optimizer's state and checkpoint files read this
/// instead of assuming every rank holds everything.
public enum ParameterPlacement: Equatable, Sendable, CustomStringConvertible {
    /// Every rank holds the whole tensor; its gradient is summed over the whole world.
    case replicated
    /// Each rank along `axis` holds a slice of a larger tensor: this rank's slice starts at
    /// `offset` (one entry per dimension) of a tensor of `globalShape`. The gradient is summed
    /// over the ranks holding the same slice; the clipping norm counts each slice once.
    case sharded(axis: GridAxis, globalShape: [Int], offset: [Int])

    /// The axis the tensor is split along (nil when replicated).
    public var shardAxis: GridAxis? {
        if case .sharded(let axis, _, _) = self { return axis }
        return nil
    }

    /// The whole tensor's shape, given this rank's local shape.
    public func globalShape(local: [Int]) -> [Int] {
        if case .sharded(_, let global, _) = self { return global }
        return local
    }

    /// Where this rank's slice starts in the whole tensor.
    public func globalOffset(local: [Int]) -> [Int] {
        if case .sharded(_, _, let offset) = self { return offset }
        return Array(repeating: 0, count: local.count)
    }

    public var description: String {
        switch self {
        case .replicated: return "replicated"
        case let .sharded(axis, global, offset): return "sharded along \(axis) (global \(global), offset \(offset))"
        }
    }
}

/// How a parameter starts out (drawn in declaration order from one seeded stream).
public enum ParameterInitialization: Equatable, Sendable {
    case ones
    case zeros
    case normal(std: Double)
    /// The values repeated in row-major order until the tensor is full: one value for a
    /// constant, one row for a pattern every row shares (an identity convolution's taps).
    case repeating([Float])
}

/// A component's parameter: name (Hugging Face), local shape `[out, in]` for matrices,
/// initial values and placement.
public struct ParameterDeclaration: Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var initialization: ParameterInitialization
    public var placement: ParameterPlacement
    /// AdamW's decoupled weight decay (matrices, not norm weights).
    public var decays: Bool

    public init(_ name: String, _ shape: [Int], _ initialization: ParameterInitialization,
                placement: ParameterPlacement = .replicated, decays: Bool? = nil) {
        self.name = name; self.shape = shape; self.initialization = initialization
        self.placement = placement; self.decays = decays ?? (shape.count >= 2)
    }

    public func prefixed(_ prefix: String) -> ParameterDeclaration {
        var copy = self
        copy.name = prefix + name
        return copy
    }
}
