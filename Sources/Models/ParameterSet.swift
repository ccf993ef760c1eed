import TensorCore

/// All parameters of a model in one flat Float32 buffer, with gradients in a second one of the
/// same layout. Each named tensor is a contiguous range, in declaration order, so optimizer
/// updates, clipping and gradient buckets work on plain ranges.
public final class ParameterSet {
    public struct Entry: Equatable, Sendable {
        public var name: String
        public var shape: [Int]
        public var offset: Int
        public var count: Int { shape.reduce(1, *) }
        public var range: Range<Int> { offset..<(offset + count) }
        /// Weight decay applies to matrices, not to norm weights.
        public var decays: Bool { shape.count >= 2 }
    }

    public let entries: [Entry]
    public let values: FloatBuffer
    public let gradients: FloatBuffer
    private let index: [String: Int]
    public var count: Int { values.count }

    public init(_ declarations: [(String, [Int])]) {
        var offset = 0
        var entries: [Entry] = []
        for (name, shape) in declarations {
            entries.append(Entry(name: name, shape: shape, offset: offset))
            offset += shape.reduce(1, *)
        }
        self.entries = entries
        index = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.name, $0) })
        values = FloatBuffer(count: offset)
        gradients = FloatBuffer(count: offset)
    }

    public func entry(_ name: String) -> Entry {
        guard let i = index[name] else { preconditionFailure("no parameter named \(name)") }
        return entries[i]
    }

    public func contains(_ name: String) -> Bool { index[name] != nil }
    public func value(_ name: String) -> UnsafeMutablePointer<Float> { values.pointer + entry(name).offset }
    public func gradient(_ name: String) -> UnsafeMutablePointer<Float> { gradients.pointer + entry(name).offset }

    public func zeroGradients() { gradients.zero() }

    /// A copy of every parameter under its name.
    public func stateDict() -> StateDict {
        StateDict(entries.map { ($0.name, Tensor(shape: $0.shape, scalars: Array(values.buffer[$0.range]))) })
    }

    /// Copies tensors in by name; every parameter must be present with its exact shape.
    public func load(_ dict: StateDict, source: String) throws {
        for e in entries {
            guard let tensor = dict[e.name] else {
                throw ModelError.missingTensor(name: e.name, source: source)
            }
            guard tensor.shape == e.shape else {
                throw ModelError.shapeMismatch(name: e.name, expected: e.shape, found: tensor.shape, source: source)
            }
            tensor.withUnsafeBufferPointer { (values.pointer + e.offset).update(from: $0.baseAddress!, count: e.count) }
        }
        let known = Set(entries.map(\.name))
        if let extra = dict.names.first(where: { !known.contains($0) }) {
            throw ModelError.unexpectedTensor(name: extra, source: source)
        }
    }
}

public enum ModelError: Error, Equatable, CustomStringConvertible {
    case missingTensor(name: String, source: String)
    case unexpectedTensor(name: String, source: String)
    case shapeMismatch(name: String, expected: [Int], found: [Int], source: String)
    case invalidConfig([String])

    public var description: String {
        switch self {
        case let .missingTensor(name, source): return "\(source): tensor \(name) is missing; was it written for another model config?"
        case let .unexpectedTensor(name, source): return "\(source): tensor \(name) is not part of this model; check model.* in the config"
        case let .shapeMismatch(name, expected, found, source): return "\(source): tensor \(name) has shape \(found), the model expects \(expected); check model.* in the config"
        case let .invalidConfig(problems): return "invalid model config: " + problems.joined(separator: "; ")
        }
    }
}
