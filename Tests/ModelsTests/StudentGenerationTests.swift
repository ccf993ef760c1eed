import Collectives
import Kernels
import Testing
import Models
import TensorCore
import _TestSupport

/// Generating from a student (all Mamba-2, or a hybrid keeping attention in some layers):
/// greedy bytes through the recurrent state equal those of full recompute, the state of an
/// all-Mamba model has one size whatever the prompt and the number of generated tokens, and
/// sharded decoding replicates the Mamba-2 state on every rank while attention caches are sharded.
@Suite struct StudentGenerationTests {
    static let (H, P) = (2, 8)
    static let mamba = SequenceMixerSpec.mamba2(Mamba2Spec(heads: H, headDim: P, chunkSize: 16))
    static let attention = SequenceMixerSpec.attention(AttentionSpec(heads: H, kvHeads: 1, headDim: P, ropeTheta: 100))

    /// A byte-level model of these mixers (d = 16), weights spread so logits differ by O(1)
    /// and greedy choices are clear: vectors around 1, matrices N(0, 1/fan-in), embeddings N(0, 1).
    static func model(_ mixers: [SequenceMixerSpec], seed: UInt64 = 3) throws -> TransformerLM {
        let config = ModelConfig(vocabSize: 256, dModel: 16, maxSequenceLength: 64,
                                 blocks: mixers.map { BlockSpec(sequenceMixer: $0, channelMixer: .swiGLU(hidden: 32)) })
        let model = try TransformerLM(config: config, seed: seed)
        var rng = RNG(seed: seed, stream: 0x5EED)
        let p = model.parameters
        for e in p.entries {
            let fanIn = e.shape.dropFirst().reduce(1, *)
            for i in e.range {
                let z = rng.nextNormal()
                p.values[i] = Float(e.shape.count == 1 ? 1 + 0.3 * z : e.name == "model.embed_tokens.weight" ? z : z / Double(fanIn).squareRoot())
            }
        }
        return model
    }

    static let kinds: [(String, [SequenceMixerSpec])] = [("all-Mamba", [mamba, mamba, mamba]), ("hybrid", [mamba, attention, mamba])]

    static let prompt: [Int32] = Array("ROMEO: ".utf8).map(Int32.init)

    /// 100 greedy bytes with the session (chunked-scan prefill, then recurrent steps; the
    /// hybrid's attention layer keeps its KV cache) equal 100 greedy bytes by recomputing the
    /// whole sequence each step with no state at all, past the 64 trained positions too; each
    /// step's logits agree to rounding.
    @Test(arguments: [0, 1])
    func greedyBytesThroughTheRecurrentStateEqualFullRecompute(kind: Int) throws {
        let (name, mixers) = Self.kinds[kind]
        let model = try Self.model(mixers)
        let session = try InferenceSession(model: model)
        var logits = try session.prefill(tokens: Self.prompt)
        var cached: [Int32] = [], recomputed: [Int32] = []
        var context = Self.prompt
        var worst = 0.0
        for _ in 0..<100 {
            cached.append(Int32(TokenSampler.argmax(logits)))
            let full = Array(try model.logits(tokens: context, batch: 1, length: context.count).suffix(256))
            worst = max(worst, maxRelativeError(logits, full))
            recomputed.append(Int32(TokenSampler.argmax(full)))
            context.append(recomputed.last!)
            logits = try session.decode(token: cached.last!)
        }
        #expect(cached == recomputed, "\(name): the recurrent state gave other bytes")
        #expect(worst < 1e-4, "\(name): logits differ by \(worst)")
        #expect(Set(cached).count > 3, "\(name): the model says something (\(cached.prefix(20)))")
        #expect(session.cachedPositions == (kind == 0 ? 0 : Self.prompt.count + 100), "\(name): only attention layers hold positions")
    }

    /// An all-Mamba model's generation state is the same number of bytes after a 1-byte or a
    /// 300-byte prompt, and after 0 or 200 generated tokens: per layer the convolution window
    /// ((H·P + 2·H·N)·(W − 1) floats) and the scan state (H·N·P floats).
    @Test func anAllMambaStateDoesNotGrowWithPromptOrGeneratedTokens() throws {
        let model = try Self.model([Self.mamba, Self.mamba, Self.mamba])
        let (H, P, N, W) = (Self.H, Self.P, Self.P, 4)
        let perLayer = ((H * P + 2 * H * N) * (W - 1) + H * N * P) * MemoryLayout<Float>.size
        var rng = RNG(seed: 9)
        for promptLength in [1, 300] {
            let session = try InferenceSession(model: model)
            var logits = try session.prefill(tokens: (0..<promptLength).map { _ in Int32(rng.nextInt(below: 256)) })
            #expect(session.cacheBytes == 3 * perLayer, "after a \(promptLength)-byte prompt")
            for _ in 0..<200 { logits = try session.decode(token: Int32(TokenSampler.argmax(logits))) }
            #expect(session.cacheBytes == 3 * perLayer, "after a \(promptLength)-byte prompt and 200 tokens")
            #expect(session.cachedPositions == 0 && session.position == promptLength + 200)
        }
        // A teacher's cache, for contrast, grows with the positions.
        let teacher = try Self.model([Self.attention, Self.attention, Self.attention])
        let session = try InferenceSession(model: teacher)
        _ = try session.prefill(tokens: [1])
        let small = session.cacheBytes
        for _ in 0..<300 { _ = try session.decode(token: 2) }
        #expect(session.cacheBytes > small && session.cacheBytes >= 3 * 301 * 2 * 8 * MemoryLayout<Float>.size, "K and V of 301 positions, 3 layers")
    }

    /// `tessera bench decode --model` fills sessions synthetically: the teacher holds the
    /// positions' keys and values (its share on each rank), the student only its constant state,
    /// and both decode the next token after it.
    @Test func syntheticFillHoldsWhatAPromptWouldLeave() throws {
        let kvBytesPerPosition = 3 * 2 * 1 * Self.P * MemoryLayout<Float>.size   // 3 layers, K and V, 1 KV head
        let teacher = try InferenceSession(model: try Self.model([Self.attention, Self.attention, Self.attention]))
        try teacher.fillSynthetic(positions: 5000, extra: 10)
        #expect(teacher.position == 5000 && teacher.cachedPositions == 5000 && teacher.usedBytes == 5000 * kvBytesPerPosition)
        #expect(try teacher.decode(token: 3).allSatisfy(\.isFinite))
        #expect(teacher.usedBytes == 5001 * kvBytesPerPosition)
        #expect(throws: InferenceError.alreadyStarted(positions: 5001)) { try teacher.fillSynthetic(positions: 1) }

        let model = try Self.model([Self.mamba, Self.mamba, Self.mamba])
        let prompted = try InferenceSession(model: model)
        _ = try prompted.prefill(tokens: Self.prompt)
        let student = try InferenceSession(model: model)
        try student.fillSynthetic(positions: 100_000)
        #expect(student.usedBytes == prompted.usedBytes && student.cacheBytes == prompted.cacheBytes && student.cachedPositions == 0)
        #expect(try student.decode(token: 3).allSatisfy(\.isFinite))

        let shares = InProcessCommunicator.run(size: 2, timeoutSeconds: 60) { comm -> Int in
            let session = try InferenceSession(model: try Self.model([Self.mamba, Self.attention, Self.mamba]), communicator: comm)
            try session.fillSynthetic(positions: 1000)
            _ = try session.decode(token: 3)
            return session.cachedPositions
        }
        #expect(try shares.map { try $0.get() }.reduce(0, +) == 1001, "the hybrid's attention positions split over the ranks")
    }

    /// Under several ranks (`tessera generate` under mpirun) the attention caches are sharded
    /// and the Mamba-2 state is replicated: every rank computes the same logits bit for bit as
    /// one rank, each rank holds the whole recurrent state, and the hybrid's attention positions
    /// are split between the ranks.
    @Test(arguments: [0, 1])
    func shardedDecodingReplicatesTheRecurrentState(kind: Int) throws {
        let (name, mixers) = Self.kinds[kind]
        func generate(_ communicator: Communicator?) throws -> (tokens: [Int32], logits: [[Float]], bytes: Int, cached: Int) {
            let session = try InferenceSession(model: try Self.model(mixers), communicator: communicator, blockSize: 4, lanes: 8)
            var logits = [try session.prefill(tokens: Self.prompt)]
            var tokens: [Int32] = []
            for _ in 0..<40 {
                tokens.append(Int32(TokenSampler.argmax(logits.last!)))
                logits.append(try session.decode(token: tokens.last!))
            }
            return (tokens, logits, session.cacheBytes, session.cachedPositions)
        }
        let one = try generate(nil)
        let results = InProcessCommunicator.run(size: 2, timeoutSeconds: 120) { comm in try generate(comm) }
        var positions = 0
        for (rank, result) in results.enumerated() {
            let r = try result.get()
            let sameTokens = r.tokens == one.tokens, sameLogits = r.logits == one.logits
            #expect(sameTokens && sameLogits, "\(name), rank \(rank): other bits than one rank")
            if kind == 0 { #expect(r.bytes == one.bytes, "\(name), rank \(rank): the whole recurrent state") }
            positions += r.cached
        }
        #expect(positions == (kind == 0 ? 0 : Self.prompt.count + 40), "\(name): attention positions split over the ranks")
    }
}
