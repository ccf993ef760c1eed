import Foundation

/// Reading one token shard file (see `TokenShardFormat`).
enum TokenShard {
    static func read(_ path: String) throws -> ([Int32], Int) {
        guard let data = FileManager.default.contents(atPath: path) else { throw DataError("\(path) cannot be read") }
        let header = TokenShardFormat.headerSize
        guard data.count >= header, Array(data.prefix(8)) == TokenShardFormat.magic else {
            throw DataError("\(path) is not a Tessera token shard (wrong magic); re-create it with `tessera data prepare`")
        }
        func read<T: FixedWidthInteger>(_ offset: Int, _ type: T.Type) -> T {
            data.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
        }
        let version = read(8, UInt32.self), width = Int(read(12, UInt32.self)), count = Int(read(16, UInt64.self)), vocab = Int(read(24, UInt32.self))
        guard version == TokenShardFormat.version else { throw DataError("\(path): shard version \(version), this Tessera reads version \(TokenShardFormat.version)") }
        guard [1, 2, 4].contains(width) else { throw DataError("\(path): token width \(width) bytes is not 1, 2 or 4") }
        guard data.count == header + count * width else {
            throw DataError("\(path) is truncated: header says \(count) tokens (\(header + count * width) bytes), the file has \(data.count) bytes; re-create it with `tessera data prepare`")
        }
        var tokens = [Int32](repeating: 0, count: count)
        data.withUnsafeBytes { raw in
            let body = raw.baseAddress! + header
            switch width {
            case 1: for i in 0..<count { tokens[i] = Int32(body.load(fromByteOffset: i, as: UInt8.self)) }
            case 2: for i in 0..<count { tokens[i] = Int32(UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            default: for i in 0..<count { tokens[i] = Int32(bitPattern: UInt32(littleEndian: body.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
            }
        }
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= vocab }) {
            throw DataError("\(path): token \(bad) is outside the vocabulary of \(vocab) recorded in its header")
        }
        return (tokens, vocab)
    }
}
