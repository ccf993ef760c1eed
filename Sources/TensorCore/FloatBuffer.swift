/// A fixed-size, zero-initialised, heap-allocated Float32 buffer with a stable address, for
/// activations, gradients and workspaces that kernels write through raw pointers.
public final class FloatBuffer {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int) {
        self.count = count
        pointer = .allocate(capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { pointer.deallocate() }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }
    public var array: [Float] { Array(buffer) }

    public func zero() { pointer.update(repeating: 0, count: count) }

    public subscript(_ i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
}
