import Testing
import Foundation
import TensorCore
import TokenData
import _TestSupport

/// Samplers in both modes: the materialised Fisher–Yates permutation (small corpora) and the
/// keyed Feistel bijection (corpora above `materializedLimit`, forced here with a small limit).
@Suite struct SamplerTests {
    /// Materialised with the default limit, or the bijection with limit 0.
    static func sampler(_ count: Int, seed: UInt64 = 9, bijection: Bool) -> Sampler {
        bijection ? Sampler(sampleCount: count, seed: seed, materializedLimit: 0) : Sampler(sampleCount: count, seed: seed)
    }

    static func epoch(_ sampler: Sampler, _ epoch: Int) -> [Int] {
        (0..<sampler.sampleCount).map { sampler.sample(atGlobalPosition: epoch * sampler.sampleCount + $0) }
    }

    @Test func smallCorporaKeepTheFisherYatesOrder() {
        // The order runs so far were trained with: pinned so the bijection never replaces it.
        let sampler = Sampler(sampleCount: 50, seed: 7)
        #expect(sampler.isMaterialized && Sampler.materializedLimit == 1 << 24)
        for epoch in 0..<2 {
            var rng = RNG(seed: 7, stream: UInt64(epoch) &+ 0xDA7A)
            var expected = Array(0..<50)
            for i in stride(from: 49, to: 0, by: -1) { expected.swapAt(i, rng.nextInt(below: i + 1)) }
            #expect(Self.epoch(sampler, epoch) == expected)
        }
        #expect(!Sampler(sampleCount: 51, seed: 7, materializedLimit: 50).isMaterialized)
        #expect(Sampler(sampleCount: 50, seed: 7, materializedLimit: 50).isMaterialized)
    }

    @Test(arguments: [1, 2, 3, 7, 64, 1000, 4097, 65_537])
    func theBijectionIsAPermutation(count: Int) {
        let sampler = Self.sampler(count, bijection: true)
        #expect(!sampler.isMaterialized)
        for epoch in 0..<2 {
            var seen = [Bool](repeating: false, count: count)
            for index in Self.epoch(sampler, epoch) {
                #expect(index >= 0 && index < count && !seen[index])
                seen[index] = true
            }
            #expect(!seen.contains(false))
        }
    }

    @Test func theBijectionDiffersBetweenEpochsAndSeeds() {
        let a = Self.sampler(1000, seed: 1, bijection: true), b = Self.sampler(1000, seed: 2, bijection: true)
        let first = Self.epoch(a, 0)
        #expect(first != Self.epoch(a, 1))
        #expect(first != Self.epoch(b, 0))
        #expect(first != Array(0..<1000), "it shuffles")
        // Not merely shifted: few positions keep their neighbour.
        let adjacent = zip(first, first.dropFirst()).filter { $1 == $0 + 1 }.count
        #expect(adjacent < 20)
        // And it is a function of (seed, position) alone.
        #expect(first == Self.epoch(Self.sampler(1000, seed: 1, bijection: true), 0))
    }

    /// Two data ranks take disjoint samples that together cover each epoch exactly once.
    @Test(arguments: [false, true])
    func twoRanksCoverAnEpochOnceWithoutSharing(bijection: Bool) {
        let count = 60, globalBatch = 6
        let sampler = Self.sampler(count, bijection: bijection)
        for epoch in 0..<2 {
            var seen: [Int] = []
            for step in 0..<(count / globalBatch) {
                let samplesSeen = (epoch * count / globalBatch + step) * globalBatch
                let slices = (0..<2).map { sampler.indices(samplesSeen: samplesSeen, globalBatch: globalBatch, rank: $0, ranks: 2) }
                #expect(slices.allSatisfy { $0.count == 3 })
                #expect(Set(slices[0]).isDisjoint(with: slices[1]))
                seen += slices.flatMap { $0 }
            }
            #expect(seen.count == count && Set(seen) == Set(0..<count), "epoch \(epoch)")
        }
    }

    /// In passes of a micro-batch, pass p over all ranks is the same set of samples on any number
    /// of ranks (one rank's p-th slice of micro × ranks), and a step still takes its global batch.
    @Test(arguments: [false, true])
    func microBatchPassesAreTheSameSetsOnAnyNumberOfRanks(bijection: Bool) {
        let sampler = Self.sampler(60, bijection: bijection), globalBatch = 12
        for (ranks, micro) in [(2, 2), (3, 2), (2, 3), (4, 1)] {
            let passes = globalBatch / (ranks * micro)
            let mine = (0..<ranks).map { sampler.indices(samplesSeen: 24, globalBatch: globalBatch, rank: $0, ranks: ranks, microBatch: micro) }
            let one = sampler.indices(samplesSeen: 24, globalBatch: globalBatch, rank: 0, ranks: 1, microBatch: micro * ranks)
            for p in 0..<passes {
                let pass = Set(mine.flatMap { $0[(p * micro)..<((p + 1) * micro)] })
                #expect(pass == Set(one[(p * micro * ranks)..<((p + 1) * micro * ranks)]), "\(ranks) ranks, micro \(micro), pass \(p)")
            }
            #expect(Set(mine.flatMap { $0 }) == Set(sampler.indices(samplesSeen: 24, globalBatch: globalBatch, rank: 0, ranks: 1)))
            #expect(mine[1] != sampler.indices(samplesSeen: 24, globalBatch: globalBatch, rank: 1, ranks: ranks) || passes == 1)
        }
    }

    /// Resuming at a position gives what an uninterrupted run takes there, including steps that
    /// cross an epoch boundary (50 windows, 8 per step).
    @Test(arguments: [false, true])
    func resumingAtAPositionMatchesAnUninterruptedRun(bijection: Bool) {
        let count = 50, globalBatch = 8, ranks = 2
        let straight = Self.sampler(count, bijection: bijection)
        let reference = (0..<20).map { step in
            (0..<ranks).map { straight.indices(samplesSeen: step * globalBatch, globalBatch: globalBatch, rank: $0, ranks: ranks) }
        }
        for resumeStep in [0, 3, 6, 7, 13] {
            let resumed = Self.sampler(count, bijection: bijection)
            for step in resumeStep..<20 {
                for rank in 0..<ranks {
                    #expect(resumed.indices(samplesSeen: step * globalBatch, globalBatch: globalBatch, rank: rank, ranks: ranks)
                            == reference[step][rank], "resumed at step \(resumeStep), step \(step), rank \(rank)")
                }
            }
        }
    }
}

/// Shards read in place: windows across shard boundaries, stored widths, and named errors.
@Suite struct TokenDataTests {
    /// Text of `bytes` bytes with some structure (the fixture corpus's generator).
    static func text(bytes: Int, seed: UInt64 = 5) -> String {
        var rng = RNG(seed: seed)
        let words = ["when", "shall", "we", "three", "meet", "again", "in", "thunder", "lightning", "or", "rain"]
        var text = ""
        while text.utf8.count < bytes { text += words[rng.nextInt(below: words.count)] + (rng.nextInt(below: 6) == 0 ? ",\n" : " ") }
        return text
    }

    static func write(_ tokens: [Int32], vocabSize: Int, to path: String) throws {
        try TokenShardFormat.encode(tokens, vocabSize: vocabSize).write(to: URL(fileURLWithPath: path))
    }

    static func error(_ body: () throws -> Void) -> DataError? {
        do { try body() } catch let error as DataError { return error } catch { Issue.record("not a DataError: \(error)") }
        return nil
    }

    @Test func manyShardsGiveTheBatchesOfOne() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let input = directory.file("text.txt")
        try Self.text(bytes: 6000).write(toFile: input, atomically: true, encoding: .utf8)
        let many = try DataPreparation.prepare(inputs: [input], output: directory.file("many"), valFraction: 0.1, shardTokens: 97)
        let one = try DataPreparation.prepare(inputs: [input], output: directory.file("one"), valFraction: 0.1)
        #expect(many.trainTokens == one.trainTokens && many.validationTokens == one.validationTokens)
        for split in ["train", "val"] {
            let sharded = try TokenDataset(directory: directory.file("many"), split: split)
            let single = try TokenDataset(directory: directory.file("one"), split: split)
            #expect(single.shards.count == 1)
            #expect(sharded.shards.count == (sharded.tokenCount + 96) / 97 && sharded.shards.count > 5)
            #expect(sharded.tokenCount == single.tokenCount && sharded.vocabSize == 256)
            #expect(sharded.tokens(0..<sharded.tokenCount) == single.tokens(0..<single.tokenCount))
            // Windows shorter than a shard (some straddle a boundary) and longer than two.
            for length in [16, 96, 250] {
                let samples = Array(0..<sharded.sampleCount(length: length)).reversed().map { $0 }
                let a = sharded.batch(samples: samples, length: length), b = single.batch(samples: samples, length: length)
                #expect(a.tokens == b.tokens && a.targets == b.targets, "\(split), length \(length)")
                #expect(a.tokens.count == samples.count * length)
            }
        }
        // The bytes themselves, in order, with targets shifted by one.
        let train = try TokenDataset(directory: directory.file("many"), split: "train")
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: input)).prefix(train.tokenCount)).map { Int32($0) }
        let window = train.batch(samples: [3], length: 40)
        #expect(window.tokens == Array(bytes[120..<160]) && window.targets == Array(bytes[121..<161]))
    }

    @Test(arguments: [(256, 1), (65536, 2), (70000, 4)])
    func tokensOfEachWidthReadBack(vocabSize: Int, width: Int) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        var rng = RNG(seed: UInt64(vocabSize))
        let first: [Int32] = [0, Int32(vocabSize - 1)] + (0..<500).map { _ in Int32(rng.nextInt(below: vocabSize)) }
        let second: [Int32] = (0..<300).map { _ in Int32(rng.nextInt(below: vocabSize)) } + [Int32(vocabSize - 1)]
        try Self.write(first, vocabSize: vocabSize, to: directory.file("train-00000.tok"))
        try Self.write(second, vocabSize: vocabSize, to: directory.file("train-00001.tok"))
        let data = try TokenDataset(directory: directory.path, split: "train")
        #expect(data.shards.map(\.width) == [width, width])
        #expect(data.vocabSize == vocabSize && data.tokenCount == 803)
        let all = first + second
        #expect(data.tokens(0..<803) == all && data.tokens(803..<803).isEmpty)
        #expect(data.shards[1][300] == Int32(vocabSize - 1))
        let batch = data.batch(samples: [0, 9, 6], length: 80)   // window 6 spans the two shards
        #expect(batch.tokens == Array(all[0..<80] + all[720..<800] + all[480..<560]))
        #expect(batch.targets == Array(all[1..<81] + all[721..<801] + all[481..<561]))
    }

    @Test func shardsOfDifferentWidthsFormOneSplit() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        try Self.write([1, 2, 3, 4, 5], vocabSize: 256, to: directory.file("val-00000.tok"))
        try Self.write([60000, 7], vocabSize: 65536, to: directory.file("val-00001.tok"))
        try Self.write([], vocabSize: 256, to: directory.file("val-00002.tok"))
        try Self.write([69999, 9, 10], vocabSize: 70000, to: directory.file("val-00003.tok"))
        let data = try TokenDataset(directory: directory.path, split: "val")
        #expect(data.vocabSize == 70000 && data.tokenCount == 10)
        #expect(data.batch(samples: [1], length: 4).tokens == [5, 60000, 7, 69999])
        #expect(data.batch(samples: [1], length: 4).targets == [60000, 7, 69999, 9])
    }

    @Test func aTruncatedShardNamesItsSizes() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.file("train-00000.tok")
        try Self.write(Array(repeating: 7, count: 100), vocabSize: 65536, to: path)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count - 3).write(to: URL(fileURLWithPath: path))
        let error = Self.error { _ = try TokenDataset(directory: directory.path, split: "train") }
        #expect(error == .sizeMismatch(file: path, tokens: 100, expectedBytes: 232, actualBytes: 229))
        #expect(error?.description.contains("\(path) is truncated: header says 100 tokens (232 bytes), the file has 229 bytes") == true)
        // A header cut short, and a file longer than its header.
        try bytes.prefix(20).write(to: URL(fileURLWithPath: path))
        #expect(Self.error { _ = try TokenShard(path: path) } == .sizeMismatch(file: path, tokens: nil, expectedBytes: 32, actualBytes: 20))
        try (bytes + Data([1, 2])).write(to: URL(fileURLWithPath: path))
        let longer = Self.error { _ = try TokenShard(path: path) }
        #expect(longer == .sizeMismatch(file: path, tokens: 100, expectedBytes: 232, actualBytes: 234))
        #expect(longer?.description.contains("longer than its header says") == true)
    }

    @Test func aFileThatIsNotAShardSaysSo() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.file("train-00000.tok")
        try Data("not a shard at all, just some text here".utf8).write(to: URL(fileURLWithPath: path))
        #expect(Self.error { _ = try TokenDataset(directory: directory.path, split: "train") } == .wrongMagic(file: path))
        try Data("TSR".utf8).write(to: URL(fileURLWithPath: path))
        #expect(Self.error { _ = try TokenShard(path: path) } == .wrongMagic(file: path))
        // Version and width fields.
        var shard = TokenShardFormat.encode([1, 2], vocabSize: 256)
        shard[8] = 2
        try shard.write(to: URL(fileURLWithPath: path))
        #expect(Self.error { _ = try TokenShard(path: path) } == .unsupportedVersion(file: path, version: 2, supported: 1))
        shard[8] = 1
        shard[12] = 3
        try shard.write(to: URL(fileURLWithPath: path))
        #expect(Self.error { _ = try TokenShard(path: path) } == .unsupportedWidth(file: path, width: 3))
        #expect(Self.error { _ = try TokenShard(path: directory.file("absent.tok")) }?.description.contains("absent.tok cannot be read") == true)
    }

    @Test func aTokenOutsideTheVocabularyIsNamed() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let narrow = directory.file("train-00000.tok"), wide = directory.file("val-00000.tok")
        try Self.write([1, 2, 3, 250, 4], vocabSize: 200, to: narrow)
        try Self.write([5, 69999, 70000, 6], vocabSize: 70000, to: wide)
        let error = Self.error { _ = try TokenDataset(directory: directory.path, split: "train") }
        #expect(error == .tokenOutOfVocabulary(file: narrow, token: 250, index: 3, vocabSize: 200))
        #expect(error?.description.contains("token 250") == true && error?.description.contains("vocabulary of 200") == true)
        #expect(Self.error { _ = try TokenDataset(directory: directory.path, split: "val") }
                == .tokenOutOfVocabulary(file: wide, token: 70000, index: 2, vocabSize: 70000))
    }

    @Test func aMissingDirectorySaysWhereItLookedAndHowToOverride() throws {
        let cwd = FileManager.default.currentDirectoryPath
        let relative = Self.error { _ = try TokenDataset(directory: "no-such-tessera-data", split: "train") }
        #expect(relative == .directoryMissing(directory: "no-such-tessera-data", currentDirectory: cwd))
        let text = relative?.description ?? ""
        #expect(text.contains("no-such-tessera-data does not exist") && text.contains("current directory \(cwd)"))
        #expect(text.contains("--set data.dir=") && text.contains("tessera data prepare") && !text.contains("setup.sh"))
        // Absolute: no current directory; the default corpus's place suggests setup.sh.
        let absolute = Self.error { _ = try TokenDataset(directory: "/no-such-tessera-data", split: "train") }
        #expect(absolute == .directoryMissing(directory: "/no-such-tessera-data", currentDirectory: nil))
        #expect(absolute?.description.contains("current directory") == false)
        let standard = Self.error { _ = try TokenDataset(directory: "no-such-checkout/data/shakespeare", split: "train") }
        #expect(standard?.description.contains("scripts/setup.sh") == true && standard?.description.contains("--set data.dir=") == true)
        // An empty directory names the split.
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        #expect(Self.error { _ = try TokenDataset(directory: directory.path, split: "val") } == .noShards(directory: directory.path, split: "val"))
    }

    @Test func binaryInputsAreSkippedByNameUnlessKept() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let inputs = directory.file("inputs")
        try FileManager.default.createDirectory(atPath: inputs, withIntermediateDirectories: true)
        let text = Self.text(bytes: 400)
        try text.write(toFile: inputs + "/a.txt", atomically: true, encoding: .utf8)
        try ("naïve café — " + text).write(toFile: inputs + "/b.txt", atomically: true, encoding: .utf8)
        try Data([0x7F, 0x45, 0x4C, 0x46, 0, 1, 2, 3] + Array(text.utf8)).write(to: URL(fileURLWithPath: inputs + "/c.bin"))
        try Data(Array("caf".utf8) + [0xE9] + Array(text.utf8)).write(to: URL(fileURLWithPath: inputs + "/d.txt"))   // Latin-1
        let summary = try DataPreparation.prepare(inputs: [inputs], output: directory.file("out"), valFraction: 0.1)
        #expect(summary.taken == [inputs + "/a.txt", inputs + "/b.txt"] && summary.files == 2)
        #expect(summary.skipped == [.init(path: inputs + "/c.bin", reason: "contains a NUL byte at offset 4"),
                                    .init(path: inputs + "/d.txt", reason: "is not valid UTF-8 at offset 3")])
        let taken = text.utf8.count + ("naïve café — " + text).utf8.count
        #expect(summary.trainTokens + summary.validationTokens == taken)
        let kept = try DataPreparation.prepare(inputs: [inputs], output: directory.file("out-binary"), valFraction: 0.1, keepBinary: true)
        #expect(kept.files == 4 && kept.skipped.isEmpty && kept.trainTokens + kept.validationTokens == taken + 2 * text.utf8.count + 8 + 4)
        // Only binary inputs: the error names them and the flag.
        let only = Self.error { _ = try DataPreparation.prepare(inputs: [inputs + "/c.bin"], output: directory.file("none"), valFraction: 0.1) }
        #expect(only == .noInputFiles(inputs: [inputs + "/c.bin"], skipped: [inputs + "/c.bin"]))
        #expect(only?.description.contains("--binary") == true)
    }

    @Test func textCheckFollowsUTF8() {
        func problem(_ bytes: [UInt8]) -> String? { bytes.withUnsafeBytes { DataPreparation.textProblem(in: $0) } }
        #expect(problem(Array("plain, ünïcødé, 日本語, 🎭".utf8)) == nil)
        #expect(problem([]) == nil)
        #expect(problem([0x61, 0xC0, 0x80]) == "is not valid UTF-8 at offset 1")           // overlong NUL
        #expect(problem([0x61, 0x62, 0xED, 0xA0, 0x80]) == "is not valid UTF-8 at offset 2")  // surrogate
        #expect(problem([0xF4, 0x90, 0x80, 0x80]) == "is not valid UTF-8 at offset 0")      // beyond U+10FFFF
        #expect(problem(Array("ok".utf8) + [0xE6, 0x97]) == "is not valid UTF-8 at offset 2") // cut off
        #expect(problem(Array("ok\0".utf8)) == "contains a NUL byte at offset 2")
    }

    @Test func prepareRefusesAValFractionOutsideZeroToOne() throws {
        for value in [-0.1, 0, 1, 1.5] {
            let error = Self.error { _ = try DataPreparation.prepare(inputs: ["x"], output: "y", valFraction: value) }
            #expect(error == .valFractionOutOfRange(value))
            #expect(error?.description.contains("--val-fraction") == true)
        }
        let missing = Self.error { _ = try DataPreparation.prepare(inputs: ["no-such-input.txt"], output: "y", valFraction: 0.1) }
        #expect(missing == .inputMissing(path: "no-such-input.txt", currentDirectory: FileManager.default.currentDirectoryPath))
    }
}
