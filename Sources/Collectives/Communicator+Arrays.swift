/// Array conveniences over the raw-buffer protocol operations.
extension Communicator {
    public func allReduce(_ array: inout [Float], op: ReduceOp = .sum) throws {
        try array.withUnsafeMutableBufferPointer { try allReduce($0, op: op) }
    }

    /// All-reduces one Float32 value.
    public func allReduce(_ value: Float, op: ReduceOp = .sum) throws -> Float {
        var a = [value]
        try allReduce(&a, op: op)
        return a[0]
    }

    public func broadcast(_ array: inout [Float], root: Int) throws {
        try array.withUnsafeMutableBytes { try broadcast($0, root: root) }
    }

    public func broadcast(_ bytes: inout [UInt8], root: Int) throws {
        try bytes.withUnsafeMutableBytes { try broadcast($0, root: root) }
    }

    /// Broadcasts a byte string whose length only `root` knows.
    public func broadcastBytes(_ bytes: [UInt8], root: Int) throws -> [UInt8] {
        var length = [Int64(rank == root ? bytes.count : 0)]
        try length.withUnsafeMutableBytes { try broadcast($0, root: root) }
        var out = rank == root ? bytes : [UInt8](repeating: 0, count: Int(length[0]))
        try broadcast(&out, root: root)
        return out
    }

    /// Gathers one Int64 from every rank, in rank order.
    public func allGather(_ value: Int64) throws -> [Int64] {
        var out = [Int64](repeating: 0, count: size)
        try withUnsafeBytes(of: value) { input in
            try out.withUnsafeMutableBytes { try allGather(input, counts: [Int](repeating: 8, count: size), into: $0) }
        }
        return out
    }

    /// Equal-size allgather of Float arrays, in rank order.
    public func allGather(_ array: [Float]) throws -> [Float] { try allGatherValues(array) }

    /// Equal-size allgather of Double arrays, in rank order.
    public func allGather(_ array: [Double]) throws -> [Double] { try allGatherValues(array) }

    private func allGatherValues<Value: BinaryFloatingPoint>(_ array: [Value]) throws -> [Value] {
        let bytes = array.count * MemoryLayout<Value>.stride
        var out = [Value](repeating: 0, count: array.count * size)
        try array.withUnsafeBytes { input in
            try out.withUnsafeMutableBytes { output in
                try allGather(input, counts: [Int](repeating: bytes, count: size), into: output)
            }
        }
        return out
    }

    /// Gathers byte strings of any lengths from every rank.
    public func allGatherBytes(_ bytes: [UInt8]) throws -> [[UInt8]] {
        let lengths = try allGather(Int64(bytes.count)).map { Int($0) }
        var flat = [UInt8](repeating: 0, count: lengths.reduce(0, +))
        try bytes.withUnsafeBytes { input in
            try flat.withUnsafeMutableBytes { try allGather(input, counts: lengths, into: $0) }
        }
        var out: [[UInt8]] = []
        var offset = 0
        for n in lengths {
            out.append(Array(flat[offset..<offset + n]))
            offset += n
        }
        return out
    }
}
