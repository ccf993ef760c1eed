import Testing
import Foundation
import TokenData
import _TestSupport

/// Bounded fuzzing of token shard files (issue 20): headers and bodies mutated from a fixed
/// seed (counts of 2^40, widths of 2^32, vocabularies of 0, truncations), each opened as a run
/// opens it. Every case is refused with a `DataError` or opens as a valid shard whose every
/// token is below its vocabulary; none crashes, and together they grow peak memory by less
/// than the budget (a shard is mapped, never copied).
@Suite struct TokenShardFuzzTests {
    @Test func mutatedTokenShardsAreRefusedOrValid() throws {
        let start = Date(), peak = peakResidentBytes()
        let directory = TemporaryDirectory("tessera-fuzz-shards")
        defer { directory.remove() }
        var m = ByteMutator(seed: 2020)
        var accepted = 0, refused = 0
        for i in 0..<2000 {
            let vocab = [200, 256, 300, 70_000][m.below(4)]
            let tokens = (0..<(m.below(64))).map { _ in Int32(m.below(vocab)) }
            var bytes = Array(TokenShardFormat.encode(tokens, vocabSize: vocab))
            if m.below(3) == 0 {   // a header field replaced by a hostile integer
                let (offset, width) = [(8, 4), (12, 4), (16, 8), (24, 4)][m.below(4)]
                bytes.replaceSubrange(offset..<(offset + width), with: m.hostileInteger(width: width))
            } else {
                bytes = m.mutate(bytes)
            }
            let path = directory.file("shard-\(i % 16).tok")
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let shard = try TokenShard(path: path)
                #expect(TokenShardFormat.headerSize + shard.tokenCount * shard.width == bytes.count)
                #expect((0..<shard.tokenCount).allSatisfy { Int(shard[$0]) < shard.vocabSize && shard[$0] >= 0 })
                accepted += 1
            } catch is DataError {
                refused += 1
            }
        }
        print("token shard fuzz: \(accepted) opened, \(refused) refused in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
        #expect(accepted > 0 && refused > 0 && accepted + refused == 2000)
        #expect(peakResidentBytes() - peak < 256 << 20)
        #expect(Date().timeIntervalSince(start) < 60)
    }
}
