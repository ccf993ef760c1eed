import Collectives
import Kernels
import TensorCore

/// The Llama-family decoder of docs/ARCHITECTURE.md with explicit forward and backward passes.
///
/// embed → blocks (one `DecoderBlock` per `BlockSpec`) → rmsnorm → lm_head → loss.
/// Parameters use Hugging Face Llama names and `[out, in]` layouts, in declaration order.
/// Activations for the backward pass live in the blocks and components, sized for the last
/// (batch, length) seen.
///
/// Initialisation (seeded, declaration order): linear and embedding weights ~ N(0, 0.02²);
/// the projections that write into the residual stream (`o_proj`, `down_proj`) ~
/// N(0, (0.02/√(2·layers))²), as in GPT-2; norm weights 1.
///
/// Threading: `threads` is handed to every kernel; `grid` to components that communicate.
/// One pass at a time per model.
public final class TransformerLM {
    public let config: ModelConfig
    public let parameters: ParameterSet
    public let blocks: [DecoderBlock]
    /// Kernel threads of this model's passes.
    public var threads: KernelThreads = .single
    /// The layout, for components that communicate; nil on one rank.
    public var grid: ProcessGrid?
    /// Receives layer inputs, outputs and attention matrices during forward passes when set.
    public var capture: CaptureHook?
    let embed: BoundParameter, finalNorm: BoundParameter, head: BoundParameter
    var state: PassState?

    public init(config: ModelConfig, seed: UInt64) throws {
        guard config.problems.isEmpty else { throw ModelError.invalidConfig(config.problems) }
        self.config = config
        let residualStd = 0.02 / (2 * Double(config.layers)).squareRoot()
        blocks = config.blocks.enumerated().map { layer, spec in
            DecoderBlock(layer: layer, spec: spec, dModel: config.dModel, eps: config.normEps, residualStd: residualStd)
        }
        let (d, vocab) = (config.dModel, config.vocabSize)
        var declarations = [ParameterDeclaration("model.embed_tokens.weight", [vocab, d], .normal(std: 0.02))]
        declarations += blocks.flatMap(\.declarations)
        declarations.append(ParameterDeclaration("model.norm.weight", [d], .ones))
        if !config.tieEmbeddings { declarations.append(ParameterDeclaration("lm_head.weight", [vocab, d], .normal(std: 0.02))) }
        parameters = ParameterSet(declarations)
        for block in blocks { block.bind(to: parameters) }
        embed = BoundParameter(parameters, "model.embed_tokens.weight")
        finalNorm = BoundParameter(parameters, "model.norm.weight")
        head = config.tieEmbeddings ? embed : BoundParameter(parameters, "lm_head.weight")
        parameters.initialize(seed: seed)
    }

    public var parameterCount: Int { parameters.count }

    /// Forward FLOPs per token of the matrix products (2 per multiply-add), without attention scores.
    public var matmulFlopsPerToken: Double {
        blocks.reduce(0) { $0 + $1.matmulFlopsPerToken } + 2 * Double(config.dModel * config.vocabSize)
    }

    /// Forward FLOPs per token of attention scores and values at sequence length T (causal: half).
    public func attentionFlopsPerToken(length: Int) -> Double {
        blocks.reduce(0) { $0 + $1.sequenceFlopsPerToken(length: length) }
    }

    /// Auxiliary losses of the last forward pass, by name (summed over layers).
    public var auxiliaryLosses: [String: Double] { state?.context.auxiliaryLosses.totals ?? [:] }
}
