import Testing
import Checkpointing
import Foundation
import _TestSupport

/// The .npy files of `tessera eval --logits`: the header numpy.load parses, the data aligned to
/// 64 bytes, the floats little-endian in row-major order, and a failed write named.
@Suite struct NumpyArrayFileTests {
    /// (header text, float32 values) of an encoded file, parsed from the format's definition.
    static func parse(_ data: Data) -> (header: String, values: [Float]) {
        let bytes = [UInt8](data)
        #expect(Array(bytes[0..<8]) == [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], "magic and version 1.0")
        let length = Int(bytes[8]) | Int(bytes[9]) << 8
        let header = String(decoding: bytes[10..<(10 + length)], as: UTF8.self)
        let payload = bytes[(10 + length)...]
        let values = stride(from: payload.startIndex, to: payload.endIndex, by: 4).map { i in
            Float(bitPattern: UInt32(payload[i]) | UInt32(payload[i + 1]) << 8 | UInt32(payload[i + 2]) << 16 | UInt32(payload[i + 3]) << 24)
        }
        return (header, values)
    }

    @Test(arguments: [[2, 3, 4], [5], [1, 1], [0, 7]])
    func encodesTheShapeAndTheValuesInOrder(shape: [Int]) {
        let values = (0..<shape.reduce(1, *)).map { Float($0) * 0.5 - 3 }
        let data = NumpyArrayFile.encode(values, shape: shape)
        let (header, decoded) = Self.parse(data)
        let dimensions = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        #expect(header.hasPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': \(dimensions), }"), "\(header)")
        #expect(header.hasSuffix("\n") && (10 + header.utf8.count) % 64 == 0, "data not 64-byte aligned: \(header.utf8.count)")
        #expect(decoded == values)
        #expect(data.count == 10 + header.utf8.count + 4 * values.count)
    }

    @Test func specialValuesKeepTheirBits() {
        let values: [Float] = [-0.0, .infinity, -.infinity, .leastNonzeroMagnitude, 1e30]
        #expect(Self.parse(NumpyArrayFile.encode(values, shape: [5])).values.map(\.bitPattern) == values.map(\.bitPattern))
    }

    @Test func writesAtomicallyAndNamesAFailedPath() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let url = directory.url.appendingPathComponent("logits.npy")
        try NumpyArrayFile.write([1, 2, 3, 4], shape: [2, 2], to: url)
        #expect(Self.parse(try Data(contentsOf: url)).values == [1, 2, 3, 4])
        let missing = directory.url.appendingPathComponent("no-such-directory/logits.npy")
        #expect {
            try NumpyArrayFile.write([1], shape: [1], to: missing)
        } throws: { error in
            "\(error)".hasPrefix("cannot write \(missing.path): ")
        }
    }
}
