import Foundation
import TensorCore

/// The safetensors format: an 8-byte little-endian header length, a JSON header mapping each
/// tensor name to dtype, shape and byte range, then the raw little-endian data. Tessera writes
/// and reads F32 tensors; files open unchanged in the `safetensors` Python package.
public enum SafeTensors {
    /// Largest JSON header read: 100 MB, the `safetensors` package's own limit.
    public static let maxHeaderBytes = 100_000_000
    /// Most dimensions of a tensor.
    public static let maxRank = 16
    /// One tensor to encode: its name, shape and the Float32 values it holds (read during the call).
    public struct Source {
        public var name: String
        public var shape: [Int]
        public var scalars: UnsafeBufferPointer<Float>
        public init(name: String, shape: [Int], scalars: UnsafeBufferPointer<Float>) {
            self.name = name; self.shape = shape; self.scalars = scalars
        }
    }

    /// Encodes tensors (in dictionary order) with optional string metadata.
    public static func encode(_ tensors: StateDict, metadata: [String: String] = [:]) throws -> Data {
        let entries = tensors.entries
        return try encode(entries.map { ($0.name, $0.tensor.shape, $0.tensor.count) }, metadata: metadata) { index, target in
            entries[index].tensor.withUnsafeBufferPointer { target.copyMemory(from: $0.baseAddress!, byteCount: $0.count * 4) }
        }
    }

    /// Encodes tensors (in the given order) straight from their buffers: the file's bytes are
    /// allocated once and each tensor copied once, so a checkpoint costs one copy of the
    /// training state, not two.
    public static func encode(_ sources: [Source], metadata: [String: String] = [:]) throws -> Data {
        for source in sources {
            precondition(source.scalars.count == source.shape.reduce(1, *), "SafeTensors.encode: \(source.name) holds \(source.scalars.count) values for shape \(source.shape)")
        }
        return try encode(sources.map { ($0.name, $0.shape, $0.scalars.count) }, metadata: metadata) { index, target in
            target.copyMemory(from: sources[index].scalars.baseAddress!, byteCount: sources[index].scalars.count * 4)
        }
    }

    /// The header for `tensors` (name, shape, element count, in file order), then each tensor's
    /// bytes, which `copy(i, destination)` writes for tensor i (never called for an empty one).
    private static func encode(_ tensors: [(name: String, shape: [Int], count: Int)], metadata: [String: String],
                               copy: (Int, UnsafeMutableRawPointer) -> Void) throws -> Data {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for tensor in tensors {
            header[tensor.name] = ["dtype": "F32", "shape": tensor.shape, "data_offsets": [offset, offset + tensor.count * 4]]
            offset += tensor.count * 4
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        // Pad the header with spaces so the data starts 8-byte aligned.
        while json.count % 8 != 0 { json.append(0x20) }
        // Not `Data(count:)`: that zero-fills every byte first, a third of the time here.
        let total = 8 + json.count + offset
        guard let target = malloc(total) else { throw CheckpointError.writeFailed(path: "memory", reason: "cannot allocate \(total) bytes to encode a shard") }
        target.storeBytes(of: UInt64(json.count).littleEndian, toByteOffset: 0, as: UInt64.self)
        json.withUnsafeBytes { (target + 8).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        var position = 8 + json.count
        for (index, tensor) in tensors.enumerated() where tensor.count > 0 {
            copy(index, target + position)
            position += tensor.count * 4
        }
        return Data(bytesNoCopy: target, count: total, deallocator: .free)
    }

    /// Decodes a file's bytes; `path` is only for error messages.
    public static func decode(_ data: Data, path: String) throws -> (tensors: StateDict, metadata: [String: String]) {
        func corrupt(_ reason: String) -> CheckpointError { .corrupt(path: path, reason: reason) }
        guard data.count >= 8 else { throw corrupt("\(data.count) bytes, shorter than the 8-byte header length") }
        let headerLength = data.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= UInt64(maxHeaderBytes) else { throw corrupt("header length \(headerLength) is over the \(maxHeaderBytes)-byte limit") }
        guard headerLength <= UInt64(data.count - 8) else { throw corrupt("header claims \(headerLength) bytes, file has \(data.count - 8) after the length") }
        let start = 8 + Int(headerLength)
        let base = data.startIndex
        guard let header = try? JSONSerialization.jsonObject(with: data.subdata(in: (base + 8)..<(base + start))) as? [String: Any] else {
            throw corrupt("the JSON header does not parse")
        }
        let metadata = header["__metadata__"] as? [String: String] ?? [:]
        let dataLength = data.count - start
        var entries: [(String, [Int], Int, Int)] = []
        for (name, value) in header where name != "__metadata__" {
            guard let info = value as? [String: Any], let dtype = info["dtype"] as? String,
                  let shape = info["shape"] as? [Int], let offsets = info["data_offsets"] as? [Int], offsets.count == 2 else {
                throw corrupt("tensor \(name) has no valid dtype, shape and data_offsets")
            }
            guard dtype == "F32" else { throw corrupt("tensor \(name) is \(dtype); Tessera reads F32 tensors") }
            guard shape.count <= maxRank, let count = elementCount(shape, fittingIn: Int.max / 4) else {
                throw corrupt("tensor \(name) has shape \(shape.prefix(maxRank + 1)): more than \(maxRank) dimensions, a negative one, or more than 2^61 elements")
            }
            guard offsets[0] >= 0, offsets[1] >= offsets[0], offsets[1] <= dataLength, offsets[1] - offsets[0] == count * 4 else {
                throw corrupt("tensor \(name) needs bytes \(offsets[0])..<\(offsets[1]) for shape \(shape), the data section has \(dataLength)")
            }
            entries.append((name, shape, offsets[0], count))
        }
        var dict = StateDict()
        for (name, shape, offset, count) in entries.sorted(by: { $0.2 < $1.2 }) {
            var scalars = [Float](repeating: 0, count: count)
            scalars.withUnsafeMutableBytes { target in
                data.withUnsafeBytes { source in
                    target.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[(start + offset)..<(start + offset + count * 4)]))
                }
            }
            dict[name] = Tensor(shape: shape, scalars: scalars)
        }
        return (dict, metadata)
    }

    /// The product of `shape`'s dimensions when none is negative and it is at most `limit`
    /// (checked step by step, so no product overflows); nil otherwise.
    static func elementCount(_ shape: [Int], fittingIn limit: Int) -> Int? {
        var count = 1
        for dimension in shape {
            guard dimension >= 0 else { return nil }
            let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
            guard !overflow else { return nil }
            count = product
        }
        return count <= limit ? count : nil
    }

    public static func read(_ url: URL) throws -> (tensors: StateDict, metadata: [String: String]) {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw CheckpointError.missing(path: url.path, hint: "the checkpoint is incomplete")
        }
        let data: Data
        do { data = try Data(contentsOf: url, options: .alwaysMapped) } catch {
            throw CheckpointError.corrupt(path: url.path, reason: "cannot be read (\(error.localizedDescription))")
        }
        return try decode(data, path: url.path)
    }
}
