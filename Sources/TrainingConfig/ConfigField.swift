import Kernels
import Models

/// The type of a config value, as YAML and `--set` spell it.
public enum ConfigKind: String, Equatable, Sendable {
    case int, float, bool, string

    /// What a value of this kind must be, for messages ("… is not an integer").
    public var expectation: String {
        switch self {
        case .int: return "an integer"
        case .float: return "a finite number"
        case .bool: return "true or false"
        case .string: return "a non-empty string"
        }
    }
}

/// The range a numeric config value must lie in, or the choices of a string.
public enum ConfigRule: Equatable, Sendable {
    case any
    case atLeastOne
    case notNegative
    case positive
    /// In [0, 1).
    case unitInterval
    /// A string that must be one of these (exactly).
    case oneOf([String])
    /// The name of a sequence mixer kind in the table when validated (`SequenceMixerKind.all`).
    case sequenceMixerKind
    /// A string naming layers: "all" or "every N" (MoELayerSelection).
    case layerSelection
    /// HOST:PORT (a port in 1...65535), or the empty string for none.
    case hostPortOrEmpty
    /// Comma-separated layer indices from 0 ("0,2"), or the empty string for none
    /// (`DistillLayerList`); checked against model.layers when validated.
    case layerListOrEmpty

    /// The requirement, for messages ("… must be at least 1"); nil for `.any`.
    public var requirement: String? {
        switch self {
        case .any: return nil
        case .atLeastOne: return "must be at least 1"
        case .notNegative: return "must not be negative"
        case .positive: return "must be positive"
        case .unitInterval: return "must be in [0, 1)"
        case .oneOf(let choices): return "must be one of " + choices.joined(separator: ", ")
        case .sequenceMixerKind: return ConfigRule.oneOf(SequenceMixerKind.all.map(\.name)).requirement
        case .layerSelection: return "must be all, or every N with N ≥ 1 (e.g. every 2: layers 2, 4, ... counting from 1)"
        case .hostPortOrEmpty: return "must be HOST:PORT with a port in 1...65535, or empty"
        case .layerListOrEmpty: return "must be layer indices from 0, comma-separated (e.g. 0,2), each below model.layers, or empty"
        }
    }

    func admits(_ value: Double) -> Bool {
        switch self {
        case .any, .oneOf, .sequenceMixerKind: return true
        case .atLeastOne: return value >= 1
        case .notNegative: return value >= 0
        case .positive: return value > 0
        case .unitInterval: return value >= 0 && value < 1
        case .layerSelection, .hostPortOrEmpty, .layerListOrEmpty: return true
        }
    }

    func admits(_ text: String) -> Bool {
        switch self {
        case .oneOf(let choices): return choices.contains(text)
        case .sequenceMixerKind: return SequenceMixerKind.named(text) != nil
        case .hostPortOrEmpty:
            guard !text.isEmpty else { return true }
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else { return false }
            return colon > text.startIndex && (1...65535).contains(port)
        case .layerListOrEmpty: return DistillLayerList(text) != nil
        default: return true
        }
    }
}

/// One key of the run config: its YAML path, where it lives in `RunConfig`, its range and
/// its meaning. `ConfigField.all` is the only place that maps key strings to properties;
/// parsing, validation, the YAML writer, the numeric hash and `--help-config` all read it.
package struct ConfigField {
    /// Where the value lives, typed by kind.
    enum Binding {
        case int(WritableKeyPath<RunConfig, Int>)
        case float(WritableKeyPath<RunConfig, Double>)
        case bool(WritableKeyPath<RunConfig, Bool>)
        case string(WritableKeyPath<RunConfig, String>)
    }

    /// "section.key", e.g. "train.global_batch".
    package let path: String
    let binding: Binding
    let rule: ConfigRule
    /// Whether the value changes the numbers a run produces (part of `numericHash`; resuming
    /// requires it unchanged).
    let numeric: Bool
    let help: String

    init(_ path: String, _ binding: Binding, _ rule: ConfigRule = .any, numeric: Bool, _ help: String) {
        self.path = path; self.binding = binding; self.rule = rule; self.numeric = numeric; self.help = help
    }

    package var section: String { String(path.prefix { $0 != "." }) }
    var key: String { String(path.drop { $0 != "." }.dropFirst()) }

    var kind: ConfigKind {
        switch binding {
        case .int: return .int
        case .float: return .float
        case .bool: return .bool
        case .string: return .string
        }
    }

    /// The canonical text of the value in `config`: `String(Int)`, `String(Double)`,
    /// `true`/`false`, or the string itself. "3e-3" and "0.003" have the same canonical text.
    package func text(in config: RunConfig) -> String {
        switch binding {
        case .int(let path): return String(config[keyPath: path])
        case .float(let path): return String(config[keyPath: path])
        case .bool(let path): return config[keyPath: path] ? "true" : "false"
        case .string(let path): return config[keyPath: path]
        }
    }

    /// The value as a number for range checks; nil for bools and strings.
    func number(in config: RunConfig) -> Double? {
        switch binding {
        case .int(let path): return Double(config[keyPath: path])
        case .float(let path): return config[keyPath: path]
        case .bool, .string: return nil
        }
    }

    /// Parses `raw` as this field's kind and stores it; false when it is not of that kind
    /// (ints: decimal integers; floats: finite numbers; bools: true/false in any case;
    /// strings: non-empty, but for `.hostPortOrEmpty`).
    func assign(_ raw: String, to config: inout RunConfig) -> Bool {
        let text = kind == .string ? raw : raw.trimmingCharacters(in: .whitespaces)
        switch binding {
        case .int(let path):
            guard let value = Int(text) else { return false }
            config[keyPath: path] = value
        case .float(let path):
            guard let value = Double(text), value.isFinite else { return false }
            config[keyPath: path] = value
        case .bool(let path):
            switch text.lowercased() {
            case "true": config[keyPath: path] = true
            case "false": config[keyPath: path] = false
            default: return false
            }
        case .string(let path):
            guard !text.isEmpty || rule == .hostPortOrEmpty || rule == .layerListOrEmpty else { return false }
            config[keyPath: path] = text
        }
        return true
    }
}

extension ConfigField {
    /// Every key, in the order of sections and keys that `yaml` and `--help-config` use (the
    /// numeric hash sorts them by key: only changing the `numeric` set changes it).
    package static let all: [ConfigField] = [
        ConfigField("model.vocab_size", .int(\.model.vocabSize), .atLeastOne, numeric: true, "vocabulary size (256: bytes)"),
        ConfigField("model.d_model", .int(\.model.dModel), .atLeastOne, numeric: true, "width of the residual stream"),
        ConfigField("model.layers", .int(\.model.layers), .atLeastOne, numeric: true, "transformer blocks"),
        ConfigField("model.heads", .int(\.model.heads), .atLeastOne, numeric: true, "attention (query) heads"),
        ConfigField("model.kv_heads", .int(\.model.kvHeads), .atLeastOne, numeric: true, "key/value heads (grouped-query attention when fewer than heads)"),
        ConfigField("model.ffn_hidden", .int(\.model.ffnHidden), .atLeastOne, numeric: true, "SwiGLU hidden width"),
        ConfigField("model.rope_theta", .float(\.model.ropeTheta), .positive, numeric: true, "RoPE base"),
        ConfigField("model.norm_eps", .float(\.model.normEps), .notNegative, numeric: true, "RMSNorm epsilon"),
        ConfigField("model.tie_embeddings", .bool(\.model.tieEmbeddings), numeric: true, "share the embedding and LM head weights"),
        // Number-changing only for a Mamba model (`numericFields`), so attention runs keep their hash.
        ConfigField("model.sequence_mixer", .string(\.model.sequenceMixer), .sequenceMixerKind, numeric: true,
                    "attention, or mamba2 (Phi-Mamba's discrete Mamba-2 mixer) or a registered kind in every layer but model.attention_layers"),
        ConfigField("model.attention_layers", .string(\.model.attentionLayers), .layerListOrEmpty, numeric: true,
                    "with a sequence_mixer other than attention: layers (from 0, e.g. 1 or 0,2) that keep attention, a hybrid (empty: none)"),
        // Not numeric: every chunk computes the same scan (to Float32 rounding).
        ConfigField("model.ssm_chunk_size", .int(\.model.ssmChunkSize), .atLeastOne, numeric: false, "chunk of the Mamba-2 layers' training scan"),
        // Not numeric: both kernels compute the same attention (to Float32 rounding), so a run may
        // resume with the other one (and the hashes of existing checkpoints stay valid).
        ConfigField("attention.kernel", .string(\.attention.kernel), .oneOf(AttentionKernel.allCases.map(\.rawValue)), numeric: false,
                    "flash (tiled, memory linear in data.seq_len) or naive (keeps heads × seq_len² probabilities per sequence)"),
        // Not numeric: both compute the same products (to Float32 rounding), so a run may resume
        // with the other one.
        ConfigField("kernels.gemm", .string(\.kernels.gemm), .oneOf(["auto"] + GemmImplementation.allCases.map(\.rawValue)), numeric: false,
                    "auto (openblas when its core is as wide as Tessera's kernel, else tessera), tessera (own AVX-512/AVX2 micro-kernels, the same bits for any kernel thread count) or openblas (cblas_sgemm)"),
        ConfigField("moe.experts", .int(\.moe.experts), .notNegative, numeric: true, "experts per mixture-of-experts layer (0: every feed-forward is dense SwiGLU)"),
        ConfigField("moe.top_k", .int(\.moe.topK), .atLeastOne, numeric: true, "experts each token runs (1 or 2); gates renormalised over them"),
        ConfigField("moe.expert_hidden", .int(\.moe.expertHidden), .atLeastOne, numeric: true, "SwiGLU hidden width of each expert"),
        ConfigField("moe.capacity_factor", .float(\.moe.capacityFactor), .notNegative, numeric: true, "pairs per expert ⌈top_k · tokens · factor / experts⌉ (0: dropless)"),
        ConfigField("moe.aux_loss", .float(\.moe.auxLoss), .notNegative, numeric: true, "load-balancing loss coefficient (the loss is 1 at perfect balance)"),
        ConfigField("moe.z_loss", .float(\.moe.zLoss), .notNegative, numeric: true, "router z-loss coefficient"),
        ConfigField("moe.layers", .string(\.moe.layers), .layerSelection, numeric: true, "MoE layers: all, or every N (also `layers: {every: N}`)"),
        ConfigField("data.dir", .string(\.data.dir), numeric: false, "token shards from `tessera data prepare`"),
        ConfigField("data.seq_len", .int(\.data.seqLen), .atLeastOne, numeric: true, "tokens per training sequence"),
        ConfigField("train.steps", .int(\.train.steps), .atLeastOne, numeric: false, "optimizer steps"),
        ConfigField("train.global_batch", .int(\.train.globalBatch), .atLeastOne, numeric: true, "sequences per step, over all data-parallel ranks"),
        ConfigField("train.seed", .int(\.train.seed), .notNegative, numeric: true, "seed of initialisation and data order"),
        ConfigField("train.lr", .float(\.train.lr), .positive, numeric: true, "peak learning rate"),
        ConfigField("train.min_lr", .float(\.train.minLr), .notNegative, numeric: true, "learning rate at the end of the cosine decay"),
        ConfigField("train.warmup_steps", .int(\.train.warmupSteps), .notNegative, numeric: true, "linear warm-up steps"),
        ConfigField("train.beta1", .float(\.train.beta1), .unitInterval, numeric: true, "AdamW β1"),
        ConfigField("train.beta2", .float(\.train.beta2), .unitInterval, numeric: true, "AdamW β2"),
        ConfigField("train.eps", .float(\.train.eps), .positive, numeric: true, "AdamW epsilon"),
        ConfigField("train.weight_decay", .float(\.train.weightDecay), .notNegative, numeric: true, "AdamW decoupled weight decay (matrices only)"),
        ConfigField("train.grad_clip", .float(\.train.gradClip), .notNegative, numeric: true, "global gradient-norm clip (0: off)"),
        ConfigField("train.log_every", .int(\.train.logEvery), .atLeastOne, numeric: false, "steps between progress lines"),
        ConfigField("train.threads", .int(\.train.threads), .atLeastOne, numeric: false, "BLAS threads per rank"),
        ConfigField("train.micro_batch", .int(\.train.microBatch), .notNegative, numeric: false,
                    "sequences per data rank per forward/backward; gradients of global_batch / (micro_batch × data ranks) passes are accumulated (0: the whole local batch in one pass); loss = cross-entropy mean over the global batch; MoE balance loss, z-loss and capacity are per pass (its micro_batch × data ranks sequences; per micro-batch under parallel.reduction=ordered) and the step takes the mean of the passes' auxiliary losses"),
        ConfigField("train.precision", .string(\.train.precision), .oneOf(ComputePrecision.allCases.map(\.rawValue)), numeric: true,
                    "products of the linear layers and of flash attention: fp32, or bf16 (inputs rounded to bf16, Float32 accumulation; weights, gradients, optimizer state, norms, softmax and its statistics stay Float32)"),
        ConfigField("eval.every", .int(\.eval.every), .notNegative, numeric: false, "steps between validation runs (0: only at the end)"),
        ConfigField("eval.batches", .int(\.eval.batches), .atLeastOne, numeric: false, "validation batches of train.global_batch sequences"),
        ConfigField("checkpoint.every", .int(\.checkpoint.every), .notNegative, numeric: false, "steps between checkpoints (0: only at the end)"),
        ConfigField("checkpoint.keep", .int(\.checkpoint.keep), .notNegative, numeric: false, "newest checkpoints kept (0: all; the newest is never deleted)"),
        ConfigField("checkpoint.keep_best", .int(\.checkpoint.keepBest), .notNegative, numeric: false,
                    "checkpoints with the lowest validation loss kept besides the newest checkpoint.keep (validated at their step)"),
        ConfigField("checkpoint.service", .string(\.checkpoint.service), .hostPortOrEmpty, numeric: false,
                    "HOST:PORT of a checkpoint service (tessera ckpt serve) to stream checkpoints to; empty: ranks write run.dir/checkpoints"),
        ConfigField("checkpoint.service_retry_seconds", .float(\.checkpoint.serviceRetrySeconds), .notNegative, numeric: false,
                    "seconds a rank keeps retrying a checkpoint the service did not take (restarting, out of reach), training going on until its next save, before the run fails; 0: fail at once"),
        ConfigField("parallel.data", .int(\.parallel.data), .notNegative, numeric: false, "data-parallel ranks (0: world size / sequence)"),
        ConfigField("parallel.sequence", .int(\.parallel.sequence), .atLeastOne, numeric: false, "sequence-parallel ranks (each holds 2 zigzag chunks of every sequence: data.seq_len a multiple of 2 × this)"),
        ConfigField("parallel.sequence_mode", .string(\.parallel.sequenceMode), .oneOf(SequenceParallelMode.allCases.map(\.rawValue)),
                    numeric: false, "ring (K/V travel the ring of sequence ranks in small units) or ulysses (all-to-all to head shards; heads and kv_heads divisible by parallel.sequence)"),
        ConfigField("parallel.expert", .int(\.parallel.expert), .atLeastOne, numeric: false, "ranks of a data group holding different experts (divides parallel.data and moe.experts)"),
        ConfigField("parallel.bucket_mb", .float(\.parallel.bucketMB), .positive, numeric: false, "gradient all-reduce bucket size in MiB"),
        ConfigField("parallel.overlap", .bool(\.parallel.overlap), numeric: false, "reduce gradient buckets while the backward pass runs (not under parallel.sequence > 1 or parallel.expert > 1, nor with mixture-of-experts at parallel.zero 3)"),
        ConfigField("parallel.zero", .int(\.parallel.zero), .notNegative, numeric: false,
                    "ZeRO stage: 0 every rank holds all optimizer state, 1 AdamW moments sharded over each parameter's replicas, 2 reduced gradients too, 3 parameters too (each layer gathered before its forward and backward)"),
        // Numeric: ordered sums the micro-batches in another order than allreduce (hashed only
        // when ordered, so existing runs keep their hash).
        ConfigField("parallel.reduction", .string(\.parallel.reduction), .oneOf(GradientReduction.allCases.map(\.rawValue)), numeric: true,
                    "allreduce (each data rank sums its passes, then one bucketed all-reduce) or ordered (every micro-batch's gradient summed in global order: 1, 2, 3, 4 data ranks give bit-identical losses, gradient norms and parameters; also MoE models, routed per micro-batch, and parallel.zero 1-3, each rank owning the slice it sums; needs train.micro_batch > 0 and data ranks only: parallel.sequence 1, parallel.expert 1)"),
        ConfigField("parallel.timeout_seconds", .float(\.parallel.timeoutSeconds), .positive, numeric: false, "deadline of every collective operation"),
        ConfigField("parallel.tcp_seal", .string(\.parallel.tcpSeal), .oneOf(ParallelSection.tcpSealChoices), numeric: false,
                    "TCP backend: seal connections (AES-256-GCM): auto = those that leave the host, on = all, off = none"),
        ConfigField("run.dir", .string(\.run.dir), numeric: false, "metrics, checkpoints and reports of this run"),
        // Not numeric: `tessera distill` reads these; a training run's numbers do not depend on them.
        ConfigField("distill.keep_attention", .string(\.distill.keepAttention), .layerListOrEmpty, numeric: false,
                    "layers (from 0) whose attention the student keeps, e.g. 1 or 0,2 (empty: every layer becomes Mamba-2)"),
        ConfigField("distill.chunk_size", .int(\.distill.chunkSize), .atLeastOne, numeric: false, "chunk of the student's Mamba-2 training scan"),
        ConfigField("distill.stage1_steps", .int(\.distill.stage1Steps), .notNegative, numeric: false, "matrix-orientation steps (0: skip stage 1)"),
        ConfigField("distill.stage1_lr", .float(\.distill.stage1Lr), .positive, numeric: false, "stage-1 AdamW learning rate"),
        ConfigField("distill.stage2_steps", .int(\.distill.stage2Steps), .notNegative, numeric: false, "hidden-state alignment steps (0: skip stage 2)"),
        ConfigField("distill.stage2_lr", .float(\.distill.stage2Lr), .positive, numeric: false, "stage-2 AdamW learning rate"),
        ConfigField("distill.stage3_steps", .int(\.distill.stage3Steps), .notNegative, numeric: false, "end-to-end knowledge-distillation steps (0: skip stage 3)"),
        ConfigField("distill.stage3_lr", .float(\.distill.stage3Lr), .positive, numeric: false, "stage-3 AdamW learning rate"),
        ConfigField("distill.temperature", .float(\.distill.temperature), .positive, numeric: false, "softmax temperature of teacher and student logits in stage 3"),
        ConfigField("distill.data_loss_weight", .float(\.distill.dataLossWeight), .notNegative, numeric: false,
                    "weight of the data cross-entropy added to the stage-3 loss (0: distillation only)"),
        ConfigField("distill.stage3_train", .string(\.distill.stage3Train), .oneOf(DistillStage3Train.allCases.map(\.rawValue)), numeric: false,
                    "what stage 3 trains: all (every student parameter) or mixers (the Mamba-2 mixers only)"),
    ]

    static let byPath = Dictionary(uniqueKeysWithValues: all.map { ($0.path, $0) })
    static let sections: [String] = all.reduce(into: []) { if $0.last != $1.section { $0.append($1.section) } }
}
