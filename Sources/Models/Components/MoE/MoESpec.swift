/// A mixture-of-experts feed-forward layer (Mixtral's `block_sparse_moe`): a router picks
/// `topK` of `experts` SwiGLU experts per token, their outputs are summed with the router's gates.
///
/// Routing follows Mixtral: router logits in Float32, softmax over all experts, the k most
/// probable experts, gates renormalised over those k (with k = 1 the gate is 1, so the router
/// learns only from the auxiliary losses). With a `capacityFactor`, each expert takes at most
/// `ceil(k · tokens · capacityFactor / experts)` (token, expert) pairs of the global batch, admitted
/// in position order with every token's first choice ahead of any second choice; a dropped pair
/// adds nothing (the residual stream carries the token) and the surviving gates are not
/// renormalised. Without one (nil) no pair is dropped.
///
/// Auxiliary losses (Switch Transformer, ST-MoE), over the tokens of the whole global batch:
/// load balance `experts · Σₑ fₑ·Pₑ` (fₑ: fraction of the k·tokens routed pairs sent to e, before
/// capacity drops; Pₑ: mean router probability of e; 1 at perfect balance, gradient through P
/// only) and router z-loss `mean over tokens of logsumexp(logits)²`. The layer's objective adds
/// `auxLossCoefficient · balance + zLossCoefficient · z` to the mean cross-entropy.
public struct MoESpec: Equatable, Sendable {
    public var experts: Int
    public var topK: Int
    /// Hidden width of each SwiGLU expert.
    public var expertHidden: Int
    /// nil: dropless. 0 drops every pair (the layer adds nothing).
    public var capacityFactor: Double?
    public var auxLossCoefficient: Double
    public var zLossCoefficient: Double

    public init(experts: Int, topK: Int, expertHidden: Int, capacityFactor: Double? = nil,
                auxLossCoefficient: Double = 0.01, zLossCoefficient: Double = 0.001) {
        self.experts = experts; self.topK = topK; self.expertHidden = expertHidden; self.capacityFactor = capacityFactor
        self.auxLossCoefficient = auxLossCoefficient; self.zLossCoefficient = zLossCoefficient
    }

    /// Problems with these values, each naming its config key; empty when the layer can be built.
    public var problems: [String] {
        var out: [String] = []
        if experts < 1 { out.append("moe.experts = \(experts) must be at least 1") }
        if !(1...2).contains(topK) { out.append("moe.top_k = \(topK) must be 1 or 2") }
        if experts >= 1, topK > experts { out.append("moe.top_k = \(topK) must not exceed moe.experts = \(experts)") }
        if expertHidden < 1 { out.append("moe.expert_hidden = \(expertHidden) must be at least 1") }
        if let c = capacityFactor, !(c >= 0 && c.isFinite) { out.append("moe.capacity_factor = \(c) must be a finite number ≥ 0") }
        if !(auxLossCoefficient >= 0) { out.append("moe.aux_loss = \(auxLossCoefficient) must not be negative") }
        if !(zLossCoefficient >= 0) { out.append("moe.z_loss = \(zLossCoefficient) must not be negative") }
        return out
    }

    /// Pairs each expert may take out of `tokens` tokens (nil: no limit).
    public func capacity(tokens: Int) -> Int? {
        capacityFactor.map { Int((Double(topK * tokens) * $0 / Double(experts)).rounded(.up)) }
    }
}

/// Which experts this rank holds: shard `index` of `count` along the grid's expert axis holds
/// the consecutive experts `index · E/count ..< (index + 1) · E/count`.
public struct ExpertSharding: Equatable, Sendable {
    public let index: Int
    public let count: Int

    public init(index: Int, count: Int) {
        precondition(count >= 1 && (0..<count).contains(index), "ExpertSharding: shard \(index) of \(count)")
        self.index = index; self.count = count
    }

    /// Every expert on this rank.
    public static let whole = ExpertSharding(index: 0, count: 1)

    /// Global indices of the experts this shard holds, out of `experts` (which `count` divides).
    public func experts(of experts: Int) -> Range<Int> {
        let per = experts / count
        return (index * per)..<((index + 1) * per)
    }

    /// The shard holding global expert `expert`.
    public func shard(of expert: Int, experts: Int) -> Int { expert / (experts / count) }
}
