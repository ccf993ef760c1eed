import Foundation

/// Token shard files: a 32-byte header, then little-endian tokens.
///
/// header: magic "TSRATOK\0" (8 bytes), version u32 = 1, token width u32 (1, 2 or 4 bytes),
/// token count u64, vocabulary size u32, reserved u32.
public enum TokenShardFormat {
    public static let magic: [UInt8] = Array("TSRATOK".utf8) + [0]
    public static let version: UInt32 = 1
    public static let headerSize = 32

    public static func encode(_ tokens: [Int32], vocabSize: Int) -> Data {
        let width = vocabSize <= 256 ? 1 : vocabSize <= 65536 ? 2 : 4
        var data = Data(magic)
        func append<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
        append(version); append(UInt32(width)); append(UInt64(tokens.count)); append(UInt32(vocabSize)); append(UInt32(0))
        data.reserveCapacity(headerSize + tokens.count * width)
        switch width {
        case 1: data.append(contentsOf: tokens.map { UInt8($0) })
        case 2: for t in tokens { append(UInt16(t)) }
        default: for t in tokens { append(UInt32(t)) }
        }
        return data
    }
}
