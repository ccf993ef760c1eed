/// What one decoder block is made of: `x += sequenceMixer(rmsnorm(x)); x += channelMixer(rmsnorm(x))`.
///
/// A model is a list of these, so layers may differ (a Mamba-2 mixer in some layers, an MoE
/// feed-forward in others). A kind is one file (its settings, its `SequenceMixerKind` or
/// `ChannelMixerKind` row and its component) plus one registration (`MixerKind.swift`).
public struct BlockSpec: Equatable, Sendable {
    public var sequenceMixer: SequenceMixerSpec
    public var channelMixer: ChannelMixerSpec

    public init(sequenceMixer: SequenceMixerSpec, channelMixer: ChannelMixerSpec) {
        self.sequenceMixer = sequenceMixer
        self.channelMixer = channelMixer
    }
}

/// Mixes information across positions: one layer's settings of some `SequenceMixerKind`.
public struct SequenceMixerSpec: Equatable, Sendable {
    public var settings: any SequenceMixerSettings

    public init(_ settings: any SequenceMixerSettings) { self.settings = settings }

    public var kind: SequenceMixerKind { settings.kind }
    /// Causal grouped-query self-attention with rotary positions.
    public static func attention(_ spec: AttentionSpec) -> Self { Self(spec) }
    /// Phi-Mamba's discrete Mamba-2 mixer (a selective state space, linear in the length).
    public static func mamba2(_ spec: Mamba2Spec) -> Self { Self(spec) }
    /// The attention's settings when this is attention (a teacher's sizes, Llama's config.json).
    public var attention: AttentionSpec? { settings as? AttentionSpec }

    public static func == (a: Self, b: Self) -> Bool { a.settings.isEqual(to: b.settings) }
}

/// The discrete Mamba-2 mixer of Phi-Mamba (`modules/mixers/discrete_mamba2.py`, with
/// `n_qk_heads = n_v_heads = heads`, `expand = 1` when `heads · headDim = d_model`):
/// in_proj to [x (H·P) | B (H·N) | C (H·N) | z (H·P) | A_log (H)], a causal depthwise
/// convolution of `convWidth` on x, B, C, the state-space mixer with per-token decay
/// sigmoid(−A_log), `y + D ⊙ x`, then `out_proj(y ⊙ silu(z + z_bias))`.
/// For distillation from attention, `heads` and `headDim` are the teacher's.
public struct Mamba2Spec: Equatable, Sendable {
    /// H: heads (Phi-Mamba's `n_v_heads`, and `n_qk_heads`: B and C are per head).
    public var heads: Int
    /// P: channels of x per head (Phi-Mamba's `headdim`).
    public var headDim: Int
    /// N: state size per head, the width of B and C (Phi-Mamba's `d_state`, equal to the head
    /// dimension in its released configuration).
    public var stateSize: Int
    /// Taps of the causal convolution (Phi-Mamba's `d_conv`).
    public var convWidth: Int
    /// Positions per chunk of the training scan (any length works; results agree to rounding).
    public var chunkSize: Int

    public init(heads: Int, headDim: Int, stateSize: Int? = nil, convWidth: Int = 4, chunkSize: Int = 64) {
        self.heads = heads; self.headDim = headDim; self.stateSize = stateSize ?? headDim
        self.convWidth = convWidth; self.chunkSize = chunkSize
    }

    /// Problems with these sizes, each naming the key; `at` is appended to each.
    public func problems(at: String = "") -> [String] {
        var out: [String] = []
        for (key, value) in [("mamba2.heads", heads), ("mamba2.head_dim", headDim), ("mamba2.state_size", stateSize),
                             ("mamba2.conv_width", convWidth), ("mamba2.chunk_size", chunkSize)] where value < 1 {
            out.append("\(key) = \(value) must be at least 1\(at)")
        }
        return out
    }
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

/// Transforms each position on its own: one layer's settings of some `ChannelMixerKind`.
public struct ChannelMixerSpec: Equatable, Sendable {
    public var settings: any ChannelMixerSettings

    public init(_ settings: any ChannelMixerSettings) { self.settings = settings }

    public var kind: ChannelMixerKind { settings.kind }
    /// `down(silu(gate(x)) ⊙ up(x))` with the given hidden width.
    public static func swiGLU(hidden: Int) -> Self { Self(SwiGLUSpec(hidden: hidden)) }
    /// A mixture of SwiGLU experts with a top-k router (Mixtral's `block_sparse_moe`).
    public static func moe(_ spec: MoESpec) -> Self { Self(spec) }
    /// The mixture's settings when this is a mixture of experts (Mixtral's config.json, expert sharding).
    public var moe: MoESpec? { settings as? MoESpec }
    /// The hidden width when this is a dense SwiGLU (Llama's `intermediate_size`).
    public var swiGLUHidden: Int? { (settings as? SwiGLUSpec)?.hidden }

    public static func == (a: Self, b: Self) -> Bool { a.settings.isEqual(to: b.settings) }
}

/// A dense SwiGLU feed-forward (Llama's `mlp`).
public struct SwiGLUSpec: Equatable, Sendable {
    public var hidden: Int

    public init(hidden: Int) { self.hidden = hidden }
}
