import Foundation

/// A NumPy `.npy` file (format 1.0) of little-endian Float32 in row-major (C) order: what
/// `numpy.load(path)` reads with no options, and one self-describing file (shape and dtype in
/// its header). `tessera eval --logits` writes one.
///
/// Layout: the magic `\x93NUMPY`, version bytes 1 0, a 2-byte little-endian header length,
/// then a Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`
/// padded with spaces and ended by a newline so that the data starts at a multiple of 64 bytes.
public enum NumpyArrayFile {
    /// The bytes of an `.npy` file holding `values` in the shape `shape` (row-major).
    /// Precondition: `values.count` is the product of `shape`, and no dimension is negative.
    public static func encode(_ values: [Float], shape: [Int]) -> Data {
        precondition(shape.allSatisfy { $0 >= 0 } && shape.reduce(1, *) == values.count,
                     "NumpyArrayFile: \(values.count) values do not fill the shape \(shape)")
        let dimensions = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': \(dimensions), }"
        let prefix = 10   // magic (6), version (2), header length (2)
        let padding = (64 - (prefix + header.utf8.count + 1) % 64) % 64
        header += String(repeating: " ", count: padding) + "\n"
        var out = Data(capacity: prefix + header.utf8.count + values.count * 4)
        out.append(contentsOf: [0x93] + Array("NUMPY".utf8) + [1, 0])
        let length = UInt16(header.utf8.count)
        out.append(contentsOf: [UInt8(length & 0xff), UInt8(length >> 8)])
        out.append(contentsOf: Array(header.utf8))
        for value in values {
            let bits = value.bitPattern.littleEndian
            withUnsafeBytes(of: bits) { out.append(contentsOf: $0) }
        }
        return out
    }

    /// Writes `encode(values, shape:)` to `url`, atomically (a reader never sees half a file).
    /// Throws `CheckpointError.writeFailed` naming the path and the system's reason.
    public static func write(_ values: [Float], shape: [Int], to url: URL) throws {
        do {
            try encode(values, shape: shape).write(to: url, options: .atomic)
        } catch {
            throw CheckpointError.writeFailed(path: url.path, reason: error.localizedDescription)
        }
    }
}
