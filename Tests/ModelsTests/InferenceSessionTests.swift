import Collectives
import Kernels
import Testing
import Models
import TensorCore
import _TestSupport

/// Generation with a KV cache (`InferenceSession`) against the full forward pass, and sharded
/// over in-process ranks against one rank.
@Suite struct InferenceSessionTests {
    /// GQA (4 heads on 2, head dim 8), trained on 16 positions; weights spread as in
    /// ReferenceDecoderTests so logits differ by O(1) and greedy choices are clear.
    static func config(vocab: Int = 256, tied: Bool = false) -> ModelConfig {
        ModelConfig(vocabSize: vocab, dModel: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 48, ropeTheta: 100,
                    normEps: 1e-5, tieEmbeddings: tied, maxSequenceLength: 16)
    }

    static func model(vocab: Int = 256, tied: Bool = false) throws -> TransformerLM {
        try ReferenceDecoderTests.model(config(vocab: vocab, tied: tied), seed: 11)
    }

    static func tokens(_ count: Int, vocab: Int, seed: UInt64 = 5) -> [Int32] {
        var rng = RNG(seed: seed)
        return (0..<count).map { _ in Int32(rng.nextInt(below: vocab)) }
    }

    /// Logits of the last position of a full forward pass over `context`.
    static func lastLogits(_ model: TransformerLM, _ context: [Int32]) throws -> [Float] {
        let vocab = model.config.vocabSize
        return Array(try model.logits(tokens: context, batch: 1, length: context.count).suffix(vocab))
    }

    struct Plan: Sendable, CustomTestStringConvertible {
        let blockSize: Int, lanes: Int
        var testDescription: String { "blocks of \(blockSize), \(lanes) lanes" }
    }

    /// The defaults, and small blocks in few lanes (several rounds per lane within 40 positions).
    static let plans = [Plan(blockSize: 64, lanes: 64), Plan(blockSize: 4, lanes: 3)]

    /// Prefill P tokens then decode the rest one by one: every position's logits equal the full
    /// forward pass's logits at that position within 1e-5, past the 16 trained positions too.
    @Test(arguments: plans)
    func logitsEqualTheFullForwardAtEveryPosition(plan: Plan) throws {
        for tied in [false, true] {
            let model = try Self.model(vocab: 64, tied: tied)
            let tokens = Self.tokens(40, vocab: 64)
            let full = try model.logits(tokens: tokens, batch: 1, length: tokens.count)
            for promptLength in [1, 17] {
                let session = try InferenceSession(model: model, blockSize: plan.blockSize, lanes: plan.lanes)
                var got = try session.prefill(tokens: Array(tokens.prefix(promptLength)))
                for t in (promptLength - 1)..<tokens.count {
                    if t >= promptLength { got = try session.decode(token: tokens[t]) }
                    let want = full[(t * 64)..<((t + 1) * 64)]
                    #expect(maxRelativeError(got, want) < 1e-5, "position \(t), prompt \(promptLength), tied \(tied)")
                }
                #expect(session.position == tokens.count && session.cachedPositions == tokens.count)
            }
        }
    }

    /// Greedy generation of 200 bytes with the cache gives exactly the bytes of generation
    /// without it (a full forward over the whole context at every step), far past the 16
    /// trained positions.
    @Test func greedyWithTheCacheEqualsFullRecompute() throws {
        let model = try Self.model()
        let prompt = Array("To be, or not".utf8).map(Int32.init)
        var context = prompt
        var withoutCache: [Int32] = []
        for _ in 0..<200 {
            let next = Int32(TokenSampler.argmax(try Self.lastLogits(model, context)))
            withoutCache.append(next)
            context.append(next)
        }
        let session = try InferenceSession(model: model)
        var logits = try session.prefill(tokens: prompt)
        var withCache: [Int32] = []
        for _ in 0..<200 {
            let next = Int32(TokenSampler.argmax(logits))
            withCache.append(next)
            logits = try session.decode(token: next)
        }
        #expect(withCache == withoutCache)
        #expect(Set(withCache).count > 5, "a degenerate model repeating one byte tests little")
        // Memory is the cache: within a doubling of what the positions need.
        let needed = 2 * 2 * 2 * 8 * session.cachedPositions * 4   // layers × (K, V) × kv heads × D × positions × bytes
        #expect(session.cacheBytes >= needed && session.cacheBytes <= 2 * needed)
    }

    /// Greedy generation of one rank (no communicator), in tokens and every step's logits.
    static func generate(_ model: TransformerLM, communicator: Communicator?, plan: Plan, prompt: [Int32], steps: Int) throws
        -> (tokens: [Int32], logits: [[Float]], cached: Int) {
        let session = try InferenceSession(model: model, communicator: communicator, blockSize: plan.blockSize, lanes: plan.lanes)
        var logits = [try session.prefill(tokens: prompt)]
        var tokens: [Int32] = []
        for _ in 0..<steps {
            tokens.append(Int32(TokenSampler.argmax(logits.last!)))
            logits.append(try session.decode(token: tokens.last!))
        }
        return (tokens, logits, session.cachedPositions)
    }

    /// 2 and 3 in-process ranks sharing the caches give every rank bit for bit the logits, and
    /// so the bytes, of one rank; each rank holds its share of the positions.
    @Test(arguments: [Plan(blockSize: 8, lanes: 64), Plan(blockSize: 4, lanes: 5)])
    func shardedRanksGiveTheBitsOfOneRank(plan: Plan) throws {
        let prompt = Self.tokens(21, vocab: 256, seed: 8), steps = 150
        let one = try Self.generate(try Self.model(), communicator: nil, plan: plan, prompt: prompt, steps: steps)
        let total = prompt.count + steps
        for ranks in [2, 3] {
            let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 120) { comm in
                try Self.generate(try Self.model(), communicator: comm, plan: plan, prompt: prompt, steps: steps)
            }
            var cached = 0
            for (rank, result) in results.enumerated() {
                let r = try result.get()
                let sameBytes = r.tokens == one.tokens, sameLogits = r.logits == one.logits   // (not the arrays in a failure)
                #expect(sameBytes, "rank \(rank) of \(ranks): other bytes")
                #expect(sameLogits, "rank \(rank) of \(ranks): other logits")
                let shard = try KVShardPlan(blockSize: plan.blockSize, lanes: plan.lanes, rank: rank, ranks: ranks)
                #expect(r.cached == shard.localLength(of: rank, length: total))
                // Its lanes' share of the positions, give or take the last block.
                let share = Double(total * shard.ownedLanes.count) / Double(plan.lanes)
                #expect(r.cached > 0 && Double(r.cached) <= share + Double(plan.blockSize), "rank \(rank) of \(ranks) holds \(r.cached) of \(total)")
                cached += r.cached
            }
            #expect(cached == total)
        }
    }

    /// Ranks whose CPUs offer different block kernels (an AVX-512 host with one without) agree
    /// on the narrowest on the first exchange, and then give one rank's bits with that kernel.
    @Test func ranksWithDifferentKernelsAgreeOnTheNarrowest() throws {
        let available = TesseraGemm.ISA.available(on: CPUInfo.current.features)
        let (heads, kvHeads, D, length) = (4, 2, 24, 301)
        let plan = try KVShardPlan(blockSize: 8, lanes: 16, rank: 0, ranks: 1)
        var rng = RNG(seed: 5)
        let keys = (0..<(length * kvHeads * D)).map { _ in Float(rng.nextNormal()) }
        let values = (0..<(length * kvHeads * D)).map { _ in Float(rng.nextNormal()) }
        let q = (0..<(heads * D)).map { _ in Float(rng.nextNormal()) }
        func attend(_ plan: KVShardPlan, isa: TesseraGemm.ISA, communicator: Communicator?) throws -> (o: [Float], isa: TesseraGemm.ISA) {
            let cache = KVCache(kvHeads: kvHeads, headDim: D)
            for position in 0..<length where plan.owner(of: position) == plan.rank {
                cache.append(key: keys.withUnsafeBufferPointer { $0.baseAddress! + position * kvHeads * D },
                             value: values.withUnsafeBufferPointer { $0.baseAddress! + position * kvHeads * D })
            }
            let attention = ShardedDecodeAttention(heads: heads, kvHeads: kvHeads, headDim: D, plan: plan, isa: isa)
            var o = [Float](repeating: 0, count: heads * D)
            for _ in 0..<2 {   // the agreement happens once; a second step keeps it
                try o.withUnsafeMutableBufferPointer { try attention.attend(q: q, cache: cache, length: length, communicator: communicator, o: $0.baseAddress!) }
            }
            return (o, attention.kernel.isa)
        }
        let one = try attend(plan, isa: .portable, communicator: nil)
        let results = InProcessCommunicator.run(size: 3, timeoutSeconds: 60) { comm in
            let shard = try KVShardPlan(blockSize: 8, lanes: 16, rank: comm.rank, ranks: 3)
            return try attend(shard, isa: comm.rank == 1 ? .portable : available[0], communicator: comm)
        }
        for (rank, result) in results.enumerated() {
            let r = try result.get()
            #expect(r.isa == .portable, "rank \(rank) runs \(r.isa), not the narrowest kernel any rank has")
            #expect(r.o == one.o, "rank \(rank): not one rank's bits with the agreed kernel")
        }
        if available.count > 2 {   // the widest kernel gives other last bits: the agreement is what makes them equal
            #expect(try attend(plan, isa: available[0], communicator: nil).o != one.o)
        }
    }

    @Test func misuseIsRefusedWithTypedErrors() throws {
        let model = try Self.model(vocab: 64)
        let session = try InferenceSession(model: model)
        #expect(throws: InferenceError.emptyPrompt) { try session.prefill(tokens: []) }
        #expect(throws: InferenceError.tokenOutOfRange(token: 64, vocabSize: 64)) { try session.prefill(tokens: [1, 64]) }
        _ = try session.prefill(tokens: [1, 2])
        #expect(throws: InferenceError.alreadyStarted(positions: 2)) { try session.prefill(tokens: [3]) }
        #expect(throws: InferenceError.tokenOutOfRange(token: -1, vocabSize: 64)) { try session.decode(token: -1) }
        #expect(throws: InferenceError.self) { try InferenceSession(model: model, blockSize: 0) }
        #expect(InferenceError.alreadyStarted(positions: 2).description.split(separator: "\n").count == 1)
    }

    @Test func shardPlanCountsEveryPositionOnce() throws {
        for (ranks, blockSize, lanes) in [(1, 64, 64), (2, 4, 64), (3, 8, 5), (7, 3, 4)] {
            for length in [0, 1, 5, 33, 100, 1000] {
                var counts = [Int](repeating: 0, count: ranks)
                let plan = try KVShardPlan(blockSize: blockSize, lanes: lanes, rank: 0, ranks: ranks)
                for p in 0..<length { counts[plan.owner(of: p)] += 1 }
                #expect(counts == (0..<ranks).map { plan.localLength(of: $0, length: length) }, "\(ranks) ranks, L \(length)")
            }
        }
    }

    @Test func samplerTopKAndGreedy() {
        let logits: [Float] = [0.5, 3, -1, 3, 2.9, 0]
        #expect(TokenSampler.argmax(logits) == 1)
        #expect(TokenSampler.topIndices(logits, k: 2) == [1, 3])
        #expect(TokenSampler.topIndices(logits, k: 0) == Array(0..<6) && TokenSampler.topIndices(logits, k: 9) == Array(0..<6))
        var greedy = TokenSampler(temperature: 0, topK: 3, seed: 1)
        #expect(greedy.next(logits) == 1)
        var topOne = TokenSampler(temperature: 5, topK: 1, seed: 1)
        #expect((0..<50).allSatisfy { _ in topOne.next(logits) == 1 })
        var topThree = TokenSampler(temperature: 100, topK: 3, seed: 2)
        let drawn = Set((0..<400).map { _ in topThree.next(logits) })
        #expect(drawn == [1, 3, 4])
        var all = TokenSampler(temperature: 100, topK: 0, seed: 2)
        #expect(Set((0..<400).map { _ in all.next(logits) }) == Set(0..<6))
        var a = TokenSampler(temperature: 1, topK: 4, seed: 9), b = TokenSampler(temperature: 1, topK: 4, seed: 9)
        #expect((0..<50).map { _ in a.next(logits) } == (0..<50).map { _ in b.next(logits) })
    }
}
