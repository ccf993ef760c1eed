/// A dense, contiguous, row-major Float32 tensor.
///
/// Storage is a Swift array, so a `Tensor` is a value: copies share storage until one of them
/// is written (copy-on-write). Kernels reach the memory with `withUnsafe...` accessors.
public struct Tensor: Equatable, Sendable {
    public private(set) var shape: [Int]
    public var scalars: [Float]

    public init(shape: [Int], scalars: [Float]) {
        precondition(shape.reduce(1, *) == scalars.count,
                     "Tensor: shape \(shape) needs \(shape.reduce(1, *)) scalars, got \(scalars.count)")
        self.shape = shape
        self.scalars = scalars
    }

    public init(zeros shape: [Int]) {
        self.init(shape: shape, scalars: [Float](repeating: 0, count: shape.reduce(1, *)))
    }

    public init(repeating value: Float, shape: [Int]) {
        self.init(shape: shape, scalars: [Float](repeating: value, count: shape.reduce(1, *)))
    }

    /// Scalars drawn from N(0, std²) with the given generator.
    public init(randomNormal shape: [Int], std: Float = 1, using rng: inout RNG) {
        let n = shape.reduce(1, *)
        var values = [Float](repeating: 0, count: n)
        for i in 0..<n { values[i] = Float(rng.nextNormal()) * std }
        self.init(shape: shape, scalars: values)
    }

    public var count: Int { scalars.count }
    public var rank: Int { shape.count }

    public subscript(_ index: Int) -> Float {
        get { scalars[index] }
        set { scalars[index] = newValue }
    }

    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try scalars.withUnsafeBufferPointer(body)
    }

    public mutating func withUnsafeMutableBufferPointer<R>(
        _ body: (inout UnsafeMutableBufferPointer<Float>) throws -> R
    ) rethrows -> R {
        try scalars.withUnsafeMutableBufferPointer(body)
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let head = scalars.prefix(8).map { String(format: "%.4g", $0) }.joined(separator: ", ")
        return "Tensor(\(shape): [\(head)\(count > 8 ? ", ..." : "")])"
    }
}

import Foundation
