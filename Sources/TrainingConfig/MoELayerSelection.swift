/// Which layers are mixtures of experts (`moe.layers`): every layer, or every N-th layer
/// counting from 1 (layers N−1, 2N−1, ... from 0: with N = 2 the second, fourth, ..., as in
/// Switch Transformer's every-other-layer placement).
public enum MoELayerSelection: Equatable, Sendable, CustomStringConvertible {
    case all
    case every(Int)

    /// Parses "all", "every N", "every: N" or "every:N" (any case); nil otherwise or when N < 1.
    public init?(_ text: String) {
        let words = text.lowercased().replacingOccurrences(of: ":", with: " ").split(separator: " ")
        if words == ["all"] { self = .all; return }
        guard words.count == 2, words[0] == "every", let n = Int(words[1]), n >= 1 else { return nil }
        self = n == 1 ? .all : .every(n)
    }

    public func contains(_ layer: Int) -> Bool {
        switch self {
        case .all: return true
        case .every(let n): return (layer + 1) % n == 0
        }
    }

    /// The canonical text ("all", "every 2"), as run.yaml and the numeric hash hold it.
    public var description: String {
        switch self {
        case .all: return "all"
        case .every(let n): return "every \(n)"
        }
    }
}
