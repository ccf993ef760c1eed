/// Rows of a row-major matrix that may be a column slice of a wider one: row r starts at
/// `pointer + r * stride`. Lets a kernel read x, B and C straight out of one projection
/// without copying them apart.
public struct StridedRows {
    public var pointer: UnsafePointer<Float>
    /// Floats from the start of one row to the start of the next.
    public var stride: Int

    public init(_ pointer: UnsafePointer<Float>, stride: Int) {
        self.pointer = pointer
        self.stride = stride
    }

    @inline(__always) public func row(_ r: Int) -> UnsafePointer<Float> { pointer + r * stride }
}

/// Writable `StridedRows`.
public struct MutableStridedRows {
    public var pointer: UnsafeMutablePointer<Float>
    public var stride: Int

    public init(_ pointer: UnsafeMutablePointer<Float>, stride: Int) {
        self.pointer = pointer
        self.stride = stride
    }

    @inline(__always) public func row(_ r: Int) -> UnsafeMutablePointer<Float> { pointer + r * stride }
}
