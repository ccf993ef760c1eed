import Foundation

/// Token shard files: a 32-byte header, then little-endian tokens.
///
/// header: magic "TSRATOK\0" (8 bytes), version u32 = 1, token width u32 (1, 2 or 4 bytes),
/// token count u64, vocabulary size u32, reserved u32.
public enum TokenShardFormat {
    public static let magic: [UInt8] = Array("TSRATOK".utf8) + [0]
    public static let version: UInt32 = 1
    public static let headerSize = 32

    /// The narrowest width that holds every token below `vocabSize`: 1, 2 or 4 bytes.
    public static func width(forVocabulary vocabSize: Int) -> Int {
        vocabSize <= 256 ? 1 : vocabSize <= 65536 ? 2 : 4
    }

    /// The 32 header bytes of a shard of `count` tokens, `width` bytes each.
    public static func header(width: Int, count: Int, vocabSize: Int) -> Data {
        var data = Data(magic)
        func append<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
        append(version); append(UInt32(width)); append(UInt64(count)); append(UInt32(vocabSize)); append(UInt32(0))
        return data
    }

    /// A whole shard holding `tokens` at the width `vocabSize` needs.
    public static func encode(_ tokens: [Int32], vocabSize: Int) -> Data {
        let width = width(forVocabulary: vocabSize)
        var data = header(width: width, count: tokens.count, vocabSize: vocabSize)
        func append<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
        data.reserveCapacity(headerSize + tokens.count * width)
        switch width {
        case 1: data.append(contentsOf: tokens.map { UInt8($0) })
        case 2: for t in tokens { append(UInt16(t)) }
        default: for t in tokens { append(UInt32(t)) }
        }
        return data
    }
}
