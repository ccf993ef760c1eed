/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, the one of zlib and gzip), checking
/// each frame of the checkpoint service's protocol against corruption in transit. Not a
/// defence against tampering: the files themselves are checked by SHA-256.
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { byte -> UInt32 in
        var c = UInt32(byte)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// Continues `crc` (the value returned for the bytes before; 0 to start) over `bytes`.
    public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c = ~crc
        table.withUnsafeBufferPointer { t in
            for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        }
        return ~c
    }

    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        Array(bytes).withUnsafeBytes { update(0, $0) }
    }
}
