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
        let full = try model.logits(tokens: tokens, batch: 1, length: tokens.count)
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
    /// bit the logits of one rank, at every position of a prompt and 30 decoded tokens.
    @Test(arguments: 0..<configs.count)
    func expertsSplitOverRanksGiveTheBitsOfOneRank(configIndex: Int) throws {
        let config = Self.configs[configIndex]
        let plan = InferenceSessionTests.Plan(blockSize: 4, lanes: 5)
        let tokens = InferenceSessionTests.tokens(37, vocab: config.vocabSize, seed: 4)
        func logits(_ communicator: Communicator?) throws -> [[Float]] {
            let session = try InferenceSession(model: try ReferenceDecoderTests.model(config, seed: 13), communicator: communicator,
                                               blockSize: plan.blockSize, lanes: plan.lanes)
            return [try session.prefill(tokens: Array(tokens.prefix(7)))] + (try tokens.dropFirst(7).map { try session.decode(token: $0) })
        }
        let one = try logits(nil)
        for ranks in [2, 3] {
            let results = InProcessCommunicator.run(size: ranks, timeoutSeconds: 120) { comm in try logits(comm) }
            for (rank, result) in results.enumerated() {
                let same = try result.get() == one   // (not the arrays in a failure)
                #expect(same, "rank \(rank) of \(ranks): other logits")
            }
        }
    }
}
