/// An ordered map from dotted parameter names (`model.layers.0.self_attn.q_proj.weight`) to tensors.
///
/// Order is insertion order, so files written from a `StateDict` list tensors the way the model
/// declares them.
public struct StateDict: Equatable, Sendable {
    public private(set) var names: [String] = []
    private var tensors: [String: Tensor] = [:]

    public init() {}

    public init(_ pairs: [(String, Tensor)]) {
        for (name, tensor) in pairs { self[name] = tensor }
    }

    public subscript(name: String) -> Tensor? {
        get { tensors[name] }
        set {
            if newValue != nil, tensors[name] == nil { names.append(name) }
            if newValue == nil { names.removeAll { $0 == name } }
            tensors[name] = newValue
        }
    }

    public var count: Int { names.count }
    public var isEmpty: Bool { names.isEmpty }

    public var entries: [(name: String, tensor: Tensor)] {
        names.map { ($0, tensors[$0]!) }
    }
}
