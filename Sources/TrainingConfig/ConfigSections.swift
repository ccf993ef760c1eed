import Kernels
import Models

/// The sections of a run config, one struct each. Their initial values are the defaults:
/// the field table (`ConfigField.all`), `--help-config` and the YAML writer read them from
/// here, so a default is written down once. Property names are the YAML keys in camel case
/// (`globalBatch` ↔ `global_batch`); a test checks the table against the encoded structs.

/// The shape of the decoder (`model:`); `RunConfig.modelConfig` turns it into a `ModelConfig`.
public struct ModelSection: Codable, Equatable, Sendable {
    public var vocabSize = 256, dModel = 256, layers = 4, heads = 4, kvHeads = 4, ffnHidden = 768
    public var ropeTheta: Double = 10_000, normEps: Double = 1e-5
    public var tieEmbeddings = false
    /// The sequence mixer of every layer: "attention", or "mamba2" (Phi-Mamba's discrete
    /// Mamba-2 mixer, heads × head dim as attention's) except the layers in `attentionLayers`.
    public var sequenceMixer = "attention"
    /// With sequenceMixer mamba2: layers (from 0, "0,2") that keep attention — a hybrid.
    public var attentionLayers = ""
    /// The Mamba-2 layers' training scan chunk (`Mamba2Spec.chunkSize`; any value gives the
    /// same function to rounding).
    public var ssmChunkSize = 64
    public init() {}
}

/// How attention is computed (`attention:`); `kernel` is an `AttentionKernel` raw value.
public struct AttentionSection: Codable, Equatable, Sendable {
    public var kernel = AttentionKernel.flash.rawValue
    public init() {}
}

/// Which code computes the numerics of this process (`kernels:`); `gemm` is a
/// `GemmImplementation` raw value, `tessera` (its own micro-kernels) or `openblas`, or `auto`
/// (the default: OpenBLAS when its core is as wide as Tessera's kernel, `GemmImplementation.automatic`).
public struct KernelsSection: Codable, Equatable, Sendable {
    public var gemm = "auto"
    public init() {}
}

/// Mixture-of-experts feed-forward layers (`moe:`); `experts = 0` keeps every layer dense.
/// `RunConfig.modelConfig` turns the chosen layers' feed-forward into `MoESpec`s.
public struct MoESection: Codable, Equatable, Sendable {
    public var experts = 0, topK = 2, expertHidden = 384
    /// 0: no capacity limit (dropless).
    public var capacityFactor: Double = 0
    public var auxLoss: Double = 0.01, zLoss: Double = 0.001
    /// "all", or "every N" (`MoELayerSelection`).
    public var layers = "all"
    public init() {}
}

/// MOHAWK distillation of a transformer teacher into a Mamba-2 student (`distill:`), read by
/// `tessera distill`; training runs ignore it. A stage with 0 steps is skipped.
public struct DistillSection: Codable, Equatable, Sendable {
    /// Layers (from 0) that keep the teacher's attention, comma-separated ("" : none; "1"; "0,2").
    public var keepAttention = ""
    /// The student mixers' chunked-scan chunk (`Mamba2Spec.chunkSize`).
    public var chunkSize = 64
    /// Stage 1 (matrix orientation), stage 2 (hidden-state alignment), stage 3 (end-to-end
    /// knowledge distillation): optimizer steps and AdamW learning rate of each.
    public var stage1Steps = 100, stage2Steps = 100, stage3Steps = 200
    public var stage1Lr: Double = 1e-3, stage2Lr: Double = 1e-3, stage3Lr: Double = 3e-4
    /// Softmax temperature of the stage-3 teacher and student logits.
    public var temperature: Double = 1.0
    /// Weight of the next-token cross-entropy on the data added to the stage-3 loss (0: none).
    public var dataLossWeight: Double = 0
    /// What stage 3 trains (`DistillStage3Train`): "all" (every student parameter) or
    /// "mixers" (the Mamba-2 mixers only; everything copied from the teacher stays frozen).
    public var stage3Train = DistillStage3Train.all.rawValue
    public init() {}

    /// `stage3Train` as its type (validated when the config is read).
    public var stage3TrainSet: DistillStage3Train { DistillStage3Train(rawValue: stage3Train) ?? .all }
}

/// The parameters stage 3 (end-to-end knowledge distillation) updates.
public enum DistillStage3Train: String, CaseIterable, Sendable {
    /// Every parameter of the student (MOHAWK's stage 3 fine-tunes the whole network).
    case all
    /// Only the Mamba-2 mixers; embeddings, norms, feed-forward, head and kept attention stay
    /// the teacher's.
    case mixers
}

/// The token shards and the sequence length (`data:`).
public struct DataSection: Codable, Equatable, Sendable {
    public var dir = "data/shakespeare"
    public var seqLen = 256
    public init() {}
}

/// Optimizer, schedule and step loop (`train:`).
public struct TrainSection: Codable, Equatable, Sendable {
    public var steps = 1000, globalBatch = 8, seed = 1234
    public var lr: Double = 3e-4, minLr: Double = 3e-5
    public var warmupSteps = 100
    public var beta1: Double = 0.9, beta2: Double = 0.95, eps: Double = 1e-8, weightDecay: Double = 0.1, gradClip: Double = 1.0
    public var logEvery = 10, threads = 1
    /// Sequences per data rank per forward/backward pass (0: the whole local batch, one pass);
    /// the step accumulates train.global_batch / (micro_batch × data ranks) passes' gradients.
    public var microBatch = 0
    /// The number format of the linear layers' and flash attention's products: fp32, or bf16
    /// inputs with Float32 accumulation (`ComputePrecision`).
    public var precision = "fp32"
    public init() {}
}

/// Validation runs (`eval:`).
public struct EvalSection: Codable, Equatable, Sendable {
    public var every = 100, batches = 8
    public init() {}
}

/// Checkpoint cadence and retention (`checkpoint:`).
public struct CheckpointSection: Codable, Equatable, Sendable {
    public var every = 0, keep = 3
    /// Checkpoints with the lowest validation loss kept besides the newest `keep` (YAML key keep_best).
    public var keepBest = 0
    /// HOST:PORT of a checkpoint service (`tessera ckpt serve`); empty: write to run.dir/checkpoints.
    public var service = ""
    /// Seconds a rank keeps retrying (with backoff) a part the service did not acknowledge, its
    /// service restarting or out of reach, before the run fails (YAML key service_retry_seconds).
    public var serviceRetrySeconds: Double = 180
    public init() {}
}

/// Process grid and gradient communication (`parallel:`).
public struct ParallelSection: Codable, Equatable, Sendable {
    public var data = 0, sequence = 1
    /// A `SequenceParallelMode` raw value.
    public var sequenceMode = SequenceParallelMode.ring.rawValue
    /// Ranks of one data group that hold different experts (carved from parallel.data).
    public var expert = 1
    public var bucketMB: Double = 4      // YAML key bucket_mb
    public var overlap = true
    /// ZeRO stage over each parameter's reduction group: 0 every rank holds everything, 1 the
    /// AdamW moments are sharded, 2 the reduced gradients too (`ZeroPartition`).
    public var zero = 0
    /// How the data ranks' gradients are summed: allreduce (each rank accumulates its passes,
    /// then one all-reduce) or ordered (per micro-batch, in global order: N ranks give one
    /// rank's bits). A `GradientReduction` raw value.
    public var reduction = "allreduce"
    public var timeoutSeconds: Double = 300
    /// Which connections of the TCP backend (`tessera launch`) are sealed: on, off, or auto
    /// (those that leave the host), YAML key tcp_seal. The choices and the default are
    /// CollectivesTCP's `TCPSealMode`, which the executable checks this against.
    public var tcpSeal = "auto"
    public static let tcpSealChoices = ["off", "on", "auto"]
    public init() {}
}

/// `parallel.reduction`: the order in which a step's micro-batch gradients are summed.
public enum GradientReduction: String, CaseIterable, Sendable {
    /// Each data rank accumulates its passes, then the ranks' sums are all-reduced (in buckets,
    /// overlapped with the backward pass): fastest; N ranks match one rank to Float32 rounding.
    case allreduce
    /// Every micro-batch's gradient from zero, summed left to right in global micro-batch
    /// order whatever the rank count: N data ranks give one rank's numbers bit for bit.
    case ordered
}

/// Where the run writes (`run:`).
public struct RunSection: Codable, Equatable, Sendable {
    public var dir = "runs/default"
    public init() {}
}
