import Foundation
import TensorCore

/// Picks the next token from logits: greedy at temperature 0, otherwise a draw from
/// softmax(logits / temperature) over the `topK` largest logits (0: all of them). Seeded, so
/// ranks that sample the same logits with the same seed pick the same tokens.
public struct TokenSampler {
    public let temperature: Double
    public let topK: Int
    private var rng: RNG

    public init(temperature: Double, topK: Int = 0, seed: UInt64) {
        precondition(temperature >= 0 && temperature.isFinite, "TokenSampler: temperature \(temperature) must be 0 or positive")
        precondition(topK >= 0, "TokenSampler: topK \(topK) must not be negative")
        self.temperature = temperature
        self.topK = topK
        rng = RNG(seed: seed)
    }

    /// Greedy: the first index of the largest logit.
    public static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        for i in logits.indices where logits[i] > logits[best] { best = i }
        return best
    }

    /// The indices of the k largest logits (ties: the lower index first), in increasing order.
    public static func topIndices(_ logits: [Float], k: Int) -> [Int] {
        guard k > 0, k < logits.count else { return Array(logits.indices) }
        let ranked = logits.indices.sorted { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        return ranked.prefix(k).sorted()
    }

    public mutating func next(_ logits: [Float]) -> Int {
        guard temperature > 0 else { return Self.argmax(logits) }
        let candidates = Self.topIndices(logits, k: topK)
        let maximum = candidates.map { logits[$0] }.max()!
        let weights = candidates.map { exp(Double(logits[$0] - maximum) / temperature) }
        var pick = rng.nextUniform() * weights.reduce(0, +)
        for (i, w) in zip(candidates, weights) {
            pick -= w
            if pick <= 0 { return i }
        }
        return candidates.last!
    }
}
