import Foundation
import TensorCore

/// All parameters of a model in one flat Float32 buffer, with gradients in a second one of the
/// same layout. Each named tensor is a contiguous range, in declaration order, so optimizer
/// updates, clipping and gradient buckets work on plain ranges.
public final class ParameterSet {
    public struct Entry: Equatable, Sendable {
        public var name: String
        public var shape: [Int]
        public var offset: Int
        public var placement: ParameterPlacement
        public var initialization: ParameterInitialization
        /// Weight decay applies to matrices, not to norm weights.
        public var decays: Bool
        public var count: Int { shape.reduce(1, *) }
        public var range: Range<Int> { offset..<(offset + count) }
        public var declaration: ParameterDeclaration {
            ParameterDeclaration(name, shape, initialization, placement: placement, decays: decays)
        }
    }

    public let entries: [Entry]
    public let values: FloatBuffer
    public let gradients: FloatBuffer
    private let index: [String: Int]
    public var count: Int { values.count }

    public init(_ declarations: [ParameterDeclaration]) {
        var offset = 0
        var entries: [Entry] = []
        for d in declarations {
            entries.append(Entry(name: d.name, shape: d.shape, offset: offset, placement: d.placement,
                                 initialization: d.initialization, decays: d.decays))
            offset += d.shape.reduce(1, *)
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

    /// The entries overlapping `range`, in offset order.
    public func entries(overlapping range: Range<Int>) -> ArraySlice<Entry> {
        var low = 0, high = entries.count
        while low < high {   // first entry ending after range.lowerBound
            let mid = (low + high) / 2
            if entries[mid].range.upperBound <= range.lowerBound { low = mid + 1 } else { high = mid }
        }
        var end = low
        while end < entries.count, entries[end].offset < range.upperBound { end += 1 }
        return entries[low..<end]
    }

    public func zeroGradients() { gradients.zero() }

    /// Fills every parameter from its declared initialization, drawing normals in declaration
    /// order from one stream of `seed`.
    public func initialize(seed: UInt64) { initialize(seed: seed, drawingOver: entries.map(\.declaration)) }

    /// Fills every parameter as if the set held all of `global` (a superset of its own
    /// declarations, in the order a rank holding everything declares them): normals are drawn
    /// for each of them in order from one stream of `seed`, and this set keeps those it holds.
    /// So a parameter gets the same values on every layout.
    public func initialize(seed: UInt64, drawingOver global: [ParameterDeclaration]) {
        var rng = RNG(seed: seed, stream: 0x1A17)
        for d in global {
            let count = d.shape.reduce(1, *)
            let target = index[d.name].map { values.pointer + entries[$0].offset }
            precondition(target == nil || entries[index[d.name]!].count == count, "initialize: \(d.name) has another shape here")
            switch d.initialization {
            case .ones: target?.update(repeating: 1, count: count)
            case .zeros: target?.update(repeating: 0, count: count)
            case .repeating(let pattern):
                for i in 0..<count { target?[i] = pattern[i % pattern.count] }
            case .normal(let std):
                for i in 0..<count {
                    let value = Float(rng.nextNormal() * std)
                    target?[i] = value
                }
            }
        }
    }

    /// A copy of every parameter under its name.
    public func stateDict() -> StateDict {
        StateDict(entries.map { ($0.name, Tensor(shape: $0.shape, scalars: Array(values.buffer[$0.range]))) })
    }

    /// Copies tensors in by name; every parameter must be present with its exact shape.
    public func load(_ dict: StateDict, source: String) throws {
        try load(dict, source: source, global: entries.map(\.declaration))
    }

    /// Copies this set's tensors in by name from a dict holding every parameter of `global`
    /// (the whole model, when this set holds a shard of it): each of them must be present with
    /// its exact shape, and nothing else.
    public func load(_ dict: StateDict, source: String, global: [ParameterDeclaration]) throws {
        for d in global {
            guard let tensor = dict[d.name] else { throw ModelError.missingTensor(name: d.name, source: source) }
            guard tensor.shape == d.shape else {
                throw ModelError.shapeMismatch(name: d.name, expected: d.shape, found: tensor.shape, source: source)
            }
        }
        let known = Set(global.map(\.name))
        if let extra = dict.names.first(where: { !known.contains($0) }) {
            throw ModelError.unexpectedTensor(name: extra, source: source)
        }
        for e in entries {
            guard let tensor = dict[e.name] else { throw ModelError.missingTensor(name: e.name, source: source) }
            guard tensor.shape == e.shape else {
                throw ModelError.shapeMismatch(name: e.name, expected: e.shape, found: tensor.shape, source: source)
            }
            tensor.withUnsafeBufferPointer { (values.pointer + e.offset).update(from: $0.baseAddress!, count: e.count) }
        }
    }
}
