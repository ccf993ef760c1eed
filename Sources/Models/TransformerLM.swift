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
    /// Seconds spent so far in the expert axis's all-to-all exchanges, over every MoE layer.
    public var expertExchangeSeconds: Double {
        blocks.reduce(0) { $0 + $1.channelMixer.exchangeSeconds }
    }
    /// Kernel threads of this model's passes.
    public var threads: KernelThreads = .single
    /// The number format of the linear layers' and flash attention's products in training passes (`train.precision`);
    /// parameters, gradients and optimizer state stay Float32 either way.
    public var precision: ComputePrecision = .fp32
    /// Mixture-of-experts routing statistics and capacity of each pass over this rank's tokens
    /// only (`parallel.reduction: ordered`: a micro-batch's gradient depends on that micro-batch
    /// alone); false: over every rank's tokens of the pass (the global batch's, as one rank sees it).
    public var localRouting = false
    /// The layout, for components that communicate; nil on one rank. Its expert axis must
    /// match `sharding` (set it through `init`).
    public var grid: ProcessGrid?
    /// The experts this rank holds.
    public let sharding: ExpertSharding
    /// Every parameter as one rank holding the whole model declares it (checkpoints hold these).
    public let globalDeclarations: [ParameterDeclaration]
    /// Receives layer inputs, outputs and attention matrices during forward passes when set.
    public var capture: CaptureHook?
    let embed: BoundParameter, finalNorm: BoundParameter, head: BoundParameter
    var state: PassState?
    /// Set under `parallel.zero` = 3: the passes acquire each unit's parameters before using them.
    public var residency: ParameterResidency?

    /// `grid`: the layout the model runs on (nil: one rank). Mixture-of-experts layers hold
    /// the experts of this rank's shard along the grid's expert axis, which must divide every
    /// layer's expert count. Initial values do not depend on the layout: they are drawn over
    /// every layer's global parameters in declaration order, each rank keeping its own.
    public init(config: ModelConfig, seed: UInt64, grid: ProcessGrid? = nil) throws {
        guard config.problems.isEmpty else { throw ModelError.invalidConfig(config.problems) }
        let sharding = grid.map { ExpertSharding(index: $0.index(along: .expert), count: $0.size(of: .expert)) } ?? .whole
        for moe in config.blocks.compactMap(\.channelMixer.moe) where moe.experts % sharding.count != 0 {
            throw ModelError.expertsDoNotDivide(experts: moe.experts, expertRanks: sharding.count)
        }
        if let grid, grid.sequenceSize > 1, let layer = config.blocks.firstIndex(where: { !$0.sequenceMixer.kind.shardsSequence }) {
            throw ModelError.sequenceParallelUnsupported(layer: layer, kind: config.blocks[layer].sequenceMixer.kind.name)
        }
        self.config = config
        self.grid = grid
        self.sharding = sharding
        let residualStd = 0.02 / (2 * Double(config.layers)).squareRoot()
        let blocks = config.blocks.enumerated().map { layer, spec in
            DecoderBlock(layer: layer, spec: spec, dModel: config.dModel, eps: config.normEps, residualStd: residualStd, sharding: sharding)
        }
        self.blocks = blocks
        let (d, vocab) = (config.dModel, config.vocabSize)
        func declarations(_ ofBlock: (DecoderBlock) -> [ParameterDeclaration]) -> [ParameterDeclaration] {
            [ParameterDeclaration("model.embed_tokens.weight", [vocab, d], .normal(std: 0.02))] + blocks.flatMap(ofBlock)
                + [ParameterDeclaration("model.norm.weight", [d], .ones)]
                + (config.tieEmbeddings ? [] : [ParameterDeclaration("lm_head.weight", [vocab, d], .normal(std: 0.02))])
        }
        parameters = ParameterSet(declarations(\.declarations))
        globalDeclarations = declarations(\.globalDeclarations)
        for block in blocks { block.bind(to: parameters) }
        embed = BoundParameter(parameters, "model.embed_tokens.weight")
        finalNorm = BoundParameter(parameters, "model.norm.weight")
        head = config.tieEmbeddings ? embed : BoundParameter(parameters, "lm_head.weight")
        parameters.initialize(seed: seed, drawingOver: globalDeclarations)
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

    /// Auxiliary losses of the last forward pass, by name (summed over layers), each with its
    /// coefficient: the objective is the mean cross-entropy plus their sum.
    public var auxiliaryLosses: [String: Double] { state?.context.auxiliaryLosses.totals ?? [:] }

    /// Auxiliary losses of the last forward pass, by name and layer (each with its coefficient).
    public var auxiliaryLossesByLayer: [String: [Int: Double]] { state?.context.auxiliaryLosses.values ?? [:] }

    /// What each mixture-of-experts layer's routing did in the last forward pass, by layer.
    public var routing: [Int: RoutingSummary] { state?.context.routing ?? [:] }

    /// Whether the forward pass communicates on the training thread: what `backwardCommunicates`
    /// covers, and mixture-of-experts layers gathering every rank's routing statistics (more
    /// than one rank, routing not `localRouting`). Parameters must then not be gathered beside it.
    public var forwardCommunicates: Bool {
        backwardCommunicates || !localRouting && (grid?.world.size ?? 1) > 1 && blocks.contains { $0.channelMixer is MixtureOfExperts }
    }

    /// Whether the backward pass itself communicates (expert-parallel layers): gradient
    /// reduction must then not run beside it on another thread.
    public var backwardCommunicates: Bool {
        blocks.contains { $0.sequenceMixer.backwardCommunicates || $0.channelMixer.backwardCommunicates }
    }
}
