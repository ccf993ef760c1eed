/// What one decoder block is made of: `x += sequenceMixer(rmsnorm(x)); x += channelMixer(rmsnorm(x))`.
///
/// A model is a list of these, so layers may differ (a Mamba-2 mixer in some layers, an MoE
/// feed-forward in others). Adding a kind is one case here and one component file; the
/// factory in `DecoderBlock` turns a spec into its component.
public struct BlockSpec: Equatable, Sendable {
    public var sequenceMixer: SequenceMixerSpec
    public var channelMixer: ChannelMixerSpec

    public init(sequenceMixer: SequenceMixerSpec, channelMixer: ChannelMixerSpec) {
        self.sequenceMixer = sequenceMixer
        self.channelMixer = channelMixer
    }
}

/// Mixes information across positions.
public enum SequenceMixerSpec: Equatable, Sendable {
    /// Causal grouped-query self-attention with rotary positions.
    case attention(AttentionSpec)
}

/// Causal grouped-query attention: `heads` query heads share `kvHeads` key/value heads.
public struct AttentionSpec: Equatable, Sendable {
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    /// RoPE base (rotate-half convention, as Hugging Face Llama).
    public var ropeTheta: Float
    /// How the attention is computed (the same function either way, to Float32 rounding).
    public var kernel: AttentionKernel
    /// How attention runs when the pass's grid shards the sequence (always on the flash kernel).
    public var sequenceMode: SequenceParallelMode

    public init(heads: Int, kvHeads: Int, headDim: Int, ropeTheta: Float, kernel: AttentionKernel = .flash,
                sequenceMode: SequenceParallelMode = .ring) {
        self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim; self.ropeTheta = ropeTheta; self.kernel = kernel
        self.sequenceMode = sequenceMode
    }
}

/// The kernel that computes attention (config key `attention.kernel`).
public enum AttentionKernel: String, CaseIterable, Equatable, Sendable {
    /// Tiled, online softmax (`FlashAttention`): keeps O and the logsumexp (B, H, T) for the
    /// backward pass, so memory grows linearly with T. The default.
    case flash
    /// Materialised (`CausalAttention`): keeps the probabilities (B, H, T, T) for the backward
    /// pass. The reference the flash kernel is checked against.
    case naive
}

/// Transforms each position on its own.
public enum ChannelMixerSpec: Equatable, Sendable {
    /// `down(silu(gate(x)) ⊙ up(x))` with the given hidden width.
    case swiGLU(hidden: Int)
    /// A mixture of SwiGLU experts with a top-k router (Mixtral's `block_sparse_moe`).
    case moe(MoESpec)
}
