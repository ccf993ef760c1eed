import Collectives
import Testing
import Models
import TensorCore
import _TestSupport

/// Generation (`InferenceSession`) through mixture-of-experts layers: each token goes through
/// its top-k experts one at a time, as the full forward pass sends it; the experts split over
/// in-process ranks give the bits of one rank.
@Suite struct MoEGenerationTests {
    /// A dense layer then a top-2-of-4 MoE layer; and two top-2-of-3 MoE layers (dropless).
    static let configs: [ModelConfig] = [
        ReferenceDecoderTests.moe(capacity: nil),
        ReferenceDecoderTests.moe(capacity: nil, experts: 3, everyLayer: true),
    ]

    /// Prefill then decode one token at a time: every position's logits equal the full forward
    /// pass's at that position within 1e-5 (past the 16 trained positions too).
    @Test(arguments: 0..<configs.count)
    func incrementalLogitsEqualTheFullForward(configIndex: Int) throws {
        let model = try ReferenceDecoderTests.model(Self.configs[configIndex], seed: 13)
        let vocab = model.config.vocabSize
        let tokens = InferenceSessionTests.tokens(24, vocab: vocab, seed: 3)
        let full = model.logits(tokens: tokens, batch: 1, length: tokens.count)
        for promptLength in [1, 9] {
            let session = try InferenceSession(model: model)
            var got = try session.prefill(tokens: Array(tokens.prefix(promptLength)))
            for t in (promptLength - 1)..<tokens.count {
                if t >= promptLength { got = try session.decode(token: tokens[t]) }
                let want = Array(full[(t * vocab)..<((t + 1) * vocab)])
                #expect(maxRelativeError(got, want) < 1e-5, "position \(t), prompt \(promptLength)")
            }
        }
    }

    /// 2 and 3 in-process ranks, each running its share of the experts, give every rank bit for
    /// bit the logits and bytes of one rank.
    @Test(arguments: 0..<configs.count)
    func expertsSplitOverRanksGiveTheBitsOfOneRank(configIndex: Int) throws {
        let config = Self.configs[configIndex]
        let plan = InferenceSessionTests.Plan(blockSize: 4, lanes: 5)
        let prompt = InferenceSessionTests.tokens(7, vocab: config.vocabSize, seed: 4), steps = 40
        let one = try InferenceSessionTests.generate(try ReferenceDecoderTests.model(config, seed: 13), communicator: nil,
                                                     plan: plan, prompt: prompt, steps: steps)
        #expect(Set(one.tokens).count > 2, "a degenerate model repeating one token tests little")
        for ranks in [2, 3] {
            let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 120) { comm in
                try InferenceSessionTests.generate(try ReferenceDecoderTests.model(config, seed: 13), communicator: comm,
                                                   plan: plan, prompt: prompt, steps: steps)
            }
            for (rank, result) in results.enumerated() {
                let r = try result.get()
                let sameTokens = r.tokens == one.tokens, sameLogits = r.logits == one.logits
                #expect(sameTokens, "rank \(rank) of \(ranks): other tokens")
                #expect(sameLogits, "rank \(rank) of \(ranks): other logits")
            }
        }
    }
}
