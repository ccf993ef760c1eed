/// The parts of the model whose parameters a pass reads together: the token embedding, each
/// block, and the head (final norm and output projection; the embedding table when tied).
public enum ParameterUnit: Hashable, Sendable {
    case embedding
    case block(Int)
    case head
}

/// Where a pass gets parameters this rank does not hold between uses (`parallel.zero` = 3):
/// before a unit runs, forward or backward, the pass calls `acquire` (whole values in
/// `parameters.values` on return) and after it `release`. `next` is the unit the pass acquires
/// after this one, so its values can be fetched while this one computes. The backward pass of
/// the embedding reads no parameter and acquires nothing.
public protocol ParameterResidency: AnyObject {
    func acquire(_ unit: ParameterUnit, next: ParameterUnit?) throws
    func release(_ unit: ParameterUnit)
}

extension TransformerLM {
    /// The parameters the passes read for `unit`, by name.
    public func parameterNames(of unit: ParameterUnit) -> [String] {
        switch unit {
        case .embedding: return ["model.embed_tokens.weight"]
        case .block(let layer): return blocks[layer].declarations.map(\.name)
        case .head: return ["model.norm.weight", config.tieEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"]
        }
    }

    /// Every unit in the order of a forward pass.
    public var parameterUnits: [ParameterUnit] { [.embedding] + blocks.indices.map(ParameterUnit.block) + [.head] }
}
