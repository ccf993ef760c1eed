import Foundation
import Kernels
import Models

/// A validated run configuration: typed sections, resolved from the defaults, a YAML file and
/// `--set key=value` overrides (in that order). Keys and their ranges are listed once, in
/// `ConfigField.all`; code reads values through the sections (`config.train.steps`).
public struct RunConfig: Codable, Equatable, Sendable {
    public var model = ModelSection(), attention = AttentionSection(), moe = MoESection(), data = DataSection()
    public var train = TrainSection(), eval = EvalSection(), checkpoint = CheckpointSection(), parallel = ParallelSection()
    public var run = RunSection(), distill = DistillSection(), kernels = KernelsSection()
    /// Where the values came from (for messages): the file path, or "defaults". Not encoded.
    public var source: String = "defaults"
    /// The keys a `--set` override gave (for messages). Not encoded.
    public var overridden: Set<String> = []

    /// Equal values from the same source (where each was set does not count).
    public static func == (a: RunConfig, b: RunConfig) -> Bool {
        a.model == b.model && a.attention == b.attention && a.moe == b.moe && a.data == b.data && a.train == b.train
            && a.eval == b.eval && a.checkpoint == b.checkpoint && a.parallel == b.parallel && a.run == b.run
            && a.distill == b.distill && a.kernels == b.kernels && a.source == b.source
    }

    /// Where the values of `keys` came from, for a message about them: the source, "--set",
    /// or "SOURCE with --set" when some came from each.
    public func origin(of keys: String...) -> String {
        let set = keys.filter(overridden.contains).count
        if set == 0 { return source }
        return set == keys.count ? "--set" : "\(source) with --set"
    }

    enum CodingKeys: String, CodingKey {
        case model, attention, moe, data, train, eval, checkpoint, parallel, run, distill, kernels
    }

    /// The defaults (not validated; they are valid).
    public init() {}

    /// Defaults, then the YAML file (if any), then `key=value` overrides; validated.
    public init(file: String?, overrides: [String] = []) throws {
        var resolution = ConfigResolution(RunConfig(), origin: .defaults)
        if let file {
            resolution.config.source = file
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ConfigError.unreadableFile(path: file)
            }
            try resolution.merge(yaml: String(decoding: data, as: UTF8.self), file: file)
        }
        try resolution.apply(overrides: overrides)
        self = try resolution.validated()
    }

    /// Builds a config from a resolved YAML (a checkpoint's run.yaml); keys it leaves out
    /// keep their defaults.
    public init(resolvedYAML text: String, source: String) throws {
        var resolution = ConfigResolution(RunConfig(), origin: .defaults)
        resolution.config.source = source
        try resolution.merge(yaml: text, file: source)
        self = try resolution.validated()
    }

    /// This config with `key=value` overrides applied, validated like `--set`.
    public func applying(_ overrides: [String]) throws -> RunConfig {
        var resolution = ConfigResolution(self, origin: source == "defaults" ? .defaults : .file(source, line: nil))
        try resolution.apply(overrides: overrides)
        return try resolution.validated()
    }

    /// This config if its values are in range (after changing sections in code).
    public func validated() throws -> RunConfig { try applying([]) }

    /// `train.precision` (validated: fp32 or bf16).
    public var precision: ComputePrecision { ComputePrecision(rawValue: train.precision) ?? .fp32 }

    /// `parallel.reduction` (validated: allreduce or ordered).
    public var reduction: GradientReduction { GradientReduction(rawValue: parallel.reduction) ?? .allreduce }

    /// The model these keys describe: Llama blocks whose feed-forward is a mixture of experts
    /// in the layers `moe.layers` selects when `moe.experts > 0`, and whose attention is the
    /// kind `model.sequence_mixer` names (`SequenceMixerKind`) in every layer but `model.attention_layers`.
    public var modelConfig: ModelConfig {
        var config = ModelConfig(vocabSize: model.vocabSize, dModel: model.dModel, layers: model.layers, heads: model.heads,
                                 kvHeads: model.kvHeads, ffnHidden: model.ffnHidden, ropeTheta: Float(model.ropeTheta),
                                 normEps: Float(model.normEps), tieEmbeddings: model.tieEmbeddings, maxSequenceLength: data.seqLen,
                                 attentionKernel: AttentionKernel(rawValue: attention.kernel) ?? .flash,
                                 sequenceMode: SequenceParallelMode(rawValue: parallel.sequenceMode) ?? .ring)
        if let spec = moeSpec, let selection = MoELayerSelection(moe.layers) {
            for layer in config.blocks.indices where selection.contains(layer) { config.blocks[layer].channelMixer = .moe(spec) }
        }
        if let kind = SequenceMixerKind.named(model.sequenceMixer), kind != .attention {
            let kept = Set(DistillLayerList(model.attentionLayers)?.layers ?? [])
            for layer in config.blocks.indices where !kept.contains(layer) {
                guard let attention = config.blocks[layer].sequenceMixer.attention else { continue }
                config.blocks[layer].sequenceMixer = SequenceMixerSpec(kind.settings(SequenceMixerKeys(attention: attention, chunkSize: model.ssmChunkSize)))
            }
        }
        return config
    }

    /// `kernels.gemm` as the implementation `Matmul.select` takes.
    public var gemmImplementation: GemmImplementation { GemmImplementation.configured(kernels.gemm) ?? .tessera }

    /// The mixture-of-experts layers' spec (nil when moe.experts = 0).
    public var moeSpec: MoESpec? {
        guard moe.experts > 0 else { return nil }
        return MoESpec(experts: moe.experts, topK: moe.topK, expertHidden: moe.expertHidden,
                       capacityFactor: moe.capacityFactor > 0 ? moe.capacityFactor : nil,
                       auxLossCoefficient: moe.auxLoss, zLossCoefficient: moe.zLoss)
    }

    /// This config with a relative `data.dir` and `run.dir` made absolute against `directory`
    /// (itself taken against the current directory when relative), with `.` and `..` removed.
    public func resolvingPaths(against directory: String) -> RunConfig {
        var copy = self
        copy.data.dir = Self.absolute(data.dir, against: directory)
        copy.run.dir = Self.absolute(run.dir, against: directory)
        return copy
    }

    static func absolute(_ path: String, against directory: String) -> String {
        if path.hasPrefix("/") { return path }
        let base = directory.hasPrefix("/") ? directory : FileManager.default.currentDirectoryPath + "/" + directory
        var parts: [Substring] = []
        for part in (base + "/" + path).split(separator: "/") {
            switch part {
            case ".": continue
            case "..": _ = parts.popLast()
            default: parts.append(part)
            }
        }
        return "/" + parts.joined(separator: "/")
    }
}
