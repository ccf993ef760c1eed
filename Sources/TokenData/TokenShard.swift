import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One token shard file (see `TokenShardFormat`), memory-mapped read-only and read in place at
/// its stored width: opening it costs no copy, so a corpus larger than memory can be trained on
/// (the kernel pages in what batches touch).
///
/// Opening validates the header and the file size, and checks in one pass over the mapped
/// bytes that every token is below the vocabulary of the header (skipped when the width cannot
/// hold a larger one, e.g. 1-byte tokens with vocabulary 256). Do not rewrite a shard in place
/// while a run reads it (`tessera data prepare` removes old shards and writes new files, which
/// is safe: a mapping keeps the old file).
public final class TokenShard: @unchecked Sendable {   // immutable after init; the mapping is read-only
    public let path: String
    /// Bytes per token in the file: 1, 2 or 4.
    public let width: Int
    public let tokenCount: Int
    /// The vocabulary size recorded in the header; every token is below it.
    public let vocabSize: Int
    private let mapping: UnsafeRawPointer
    private let mappedBytes: Int

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw DataError.fileUnreadable(file: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw DataError.fileUnreadable(file: path, reason: String(cString: strerror(errno))) }
        let size = Int(status.st_size)
        guard size >= TokenShardFormat.magic.count else { throw DataError.wrongMagic(file: path) }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw DataError.fileUnreadable(file: path, reason: "mmap: " + String(cString: strerror(errno)))
        }
        let parsed: (width: Int, count: Int, vocab: Int)
        do {
            parsed = try Self.parseHeader(UnsafeRawBufferPointer(start: base, count: size), path: path)
        } catch {
            munmap(base, size)   // not yet fully initialised, so deinit would not run
            throw error
        }
        mapping = UnsafeRawPointer(base)
        mappedBytes = size
        width = parsed.width
        tokenCount = parsed.count
        vocabSize = parsed.vocab
        if vocabSize < 1 << (8 * width) { try checkVocabulary() }   // a throw here runs deinit
    }

    /// Checks magic, version, width, vocabulary and that the file size matches the header.
    private static func parseHeader(_ bytes: UnsafeRawBufferPointer, path: String) throws -> (width: Int, count: Int, vocab: Int) {
        let size = bytes.count, header = TokenShardFormat.headerSize
        guard bytes.prefix(TokenShardFormat.magic.count).elementsEqual(TokenShardFormat.magic) else { throw DataError.wrongMagic(file: path) }
        guard size >= header else { throw DataError.sizeMismatch(file: path, tokens: nil, expectedBytes: header, actualBytes: size) }
        func field<T: FixedWidthInteger>(_ offset: Int, _ type: T.Type) -> T {
            T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        let version = field(8, UInt32.self), width = Int(field(12, UInt32.self))
        let count = field(16, UInt64.self), vocab = Int(field(24, UInt32.self))
        guard version == TokenShardFormat.version else {
            throw DataError.unsupportedVersion(file: path, version: version, supported: TokenShardFormat.version)
        }
        guard [1, 2, 4].contains(width) else { throw DataError.unsupportedWidth(file: path, width: width) }
        guard vocab >= 1, vocab <= 1 << 31 else { throw DataError.unsupportedVocabulary(file: path, vocabSize: vocab) }
        // A count too large for the file (or for Int) is a size mismatch, not an overflow trap.
        let (payload, overflow) = Int(clamping: count).multipliedReportingOverflow(by: width)
        guard !overflow, payload == size - header else {
            let expected = overflow || payload > Int.max - header ? Int.max : header + payload
            throw DataError.sizeMismatch(file: path, tokens: Int(clamping: count), expectedBytes: expected, actualBytes: size)
        }
        return (width, Int(count), vocab)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: mapping), mappedBytes)
    }

    /// Token `index` (0-based) of this shard.
    public subscript(index: Int) -> Int32 {
        precondition(index >= 0 && index < tokenCount, "token \(index) is outside shard \(path) of \(tokenCount) tokens")
        var token: Int32 = 0
        copy(from: index, count: 1, into: &token)
        return token
    }

    /// Copies tokens `offset ..< offset + count` into `out`, widening to Int32.
    func copy(from offset: Int, count: Int, into out: UnsafeMutablePointer<Int32>) {
        precondition(offset >= 0 && count >= 0 && offset + count <= tokenCount)
        guard count > 0 else { return }
        let body = mapping + TokenShardFormat.headerSize + offset * width
        switch width {
        case 1:
            for i in 0..<count { out[i] = Int32(body.load(fromByteOffset: i, as: UInt8.self)) }
        case 2:
            for i in 0..<count { out[i] = Int32(UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        default:
            for i in 0..<count { out[i] = Int32(bitPattern: UInt32(littleEndian: body.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        }
    }

    /// One pass over the mapped tokens (no copy): the first token not below `vocabSize` throws.
    private func checkVocabulary() throws {
        guard tokenCount > 0 else { return }
        let body = mapping + TokenShardFormat.headerSize
        let limit = UInt32(vocabSize - 1)
        func scan(_ load: (Int) -> UInt32) throws {
            // Blocks keep the common path a tight max-reduction the compiler vectorises.
            let block = 1 << 16
            for start in stride(from: 0, to: tokenCount, by: block) {
                let end = min(start + block, tokenCount)
                var largest: UInt32 = 0
                for i in start..<end { largest = max(largest, load(i)) }
                if largest > limit, let bad = (start..<end).first(where: { load($0) > limit }) {
                    throw DataError.tokenOutOfVocabulary(file: path, token: Int(load(bad)), index: bad, vocabSize: vocabSize)
                }
            }
        }
        switch width {
        case 1: try scan { UInt32(body.load(fromByteOffset: $0, as: UInt8.self)) }
        case 2: try scan { UInt32(UInt16(littleEndian: body.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) }
        default: try scan { UInt32(littleEndian: body.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
        }
    }
}
