import Foundation

/// The settings of one layer's sequence mixer (`AttentionSpec`, `Mamba2Spec`, ...). A kind's
/// settings type conforms, so the model, its config and its checkpoints ask the settings and
/// their `kind` instead of switching over kinds: a new mixer is one file (settings, kind,
/// component) plus one registration (`SequenceMixerKind.register`, or a row in `builtIn`).
public protocol SequenceMixerSettings: Sendable {
    /// This mixer's row in the table of kinds.
    var kind: SequenceMixerKind { get }
    /// The component of one layer; `residualStd` is the initial scale of its output projection.
    func makeComponent(dModel: Int, residualStd: Double) -> LayerComponent
    /// Problems with these sizes, each naming its config key, with `at` (" (layer 3)" or "") appended.
    func problems(dModel: Int, at: String) -> [String]
    /// The `core_input` of this mixer's `Block…` section in a Phi-Mamba-style `config.json`.
    func phiMambaCoreInput(model: ModelConfig) -> [String: Any]
    func isEqual(to other: any SequenceMixerSettings) -> Bool
}

/// The settings of one layer's channel mixer (`SwiGLUSpec`, `MoESpec`).
public protocol ChannelMixerSettings: Sendable {
    var kind: ChannelMixerKind { get }
    /// `sharding`: the experts this rank holds (mixtures of experts).
    func makeComponent(dModel: Int, residualStd: Double, sharding: ExpertSharding) -> LayerComponent
    func problems(at: String) -> [String]
    /// The `mlp` of this layer's `Block…` section in a Phi-Mamba-style `config.json`.
    var phiMambaMLP: [String: Any] { get }
    func isEqual(to other: any ChannelMixerSettings) -> Bool
}

extension SequenceMixerSettings where Self: Equatable {
    public func isEqual(to other: any SequenceMixerSettings) -> Bool { (other as? Self) == self }
}

extension ChannelMixerSettings where Self: Equatable {
    public func isEqual(to other: any ChannelMixerSettings) -> Bool { (other as? Self) == self }
}

/// What the model keys give a layer, for a kind to build its settings from: the attention of
/// `model.heads`, `kv_heads`, `d_model / heads`, `rope_theta`, `attention.kernel` and
/// `parallel.sequence_mode`, and `model.ssm_chunk_size`.
public struct SequenceMixerKeys: Sendable {
    public var attention: AttentionSpec
    public var chunkSize: Int

    public init(attention: AttentionSpec, chunkSize: Int) { self.attention = attention; self.chunkSize = chunkSize }
}

/// One kind of sequence mixer and what it can do; the table of kinds is `SequenceMixerKind.all`.
/// Whether a layer runs incrementally is its component's (`LayerComponent.incremental`).
public struct SequenceMixerKind: MixerKind {
    /// The value of `model.sequence_mixer`, and the kind's name in reports and errors.
    public let name: String
    /// Its module in Phi-Mamba-style `config.json` (`mixer_types`; `CoreType` after `modules.mixers.`).
    public let coreName: String
    /// Whether it runs on a sequence sharded over ranks (ring or Ulysses); if not, a model with
    /// this kind on a grid with `parallel.sequence` > 1 is refused, naming it.
    public let shardsSequence: Bool
    /// A layer of this kind as the model keys describe it (`model.sequence_mixer: NAME`).
    public let settings: @Sendable (SequenceMixerKeys) -> any SequenceMixerSettings

    public init(name: String, coreName: String, shardsSequence: Bool,
                settings: @escaping @Sendable (SequenceMixerKeys) -> any SequenceMixerSettings) {
        self.name = name; self.coreName = coreName; self.shardsSequence = shardsSequence; self.settings = settings
    }

    static let table = MixerKindTable<SequenceMixerKind>([.attention, .mamba2])
    /// Every kind, built-in first, then registered ones in the order they were registered.
    public static var all: [SequenceMixerKind] { table.all }
    public static func named(_ name: String) -> SequenceMixerKind? { table.named(name) }
    /// Adds `kind` to the table (replacing a kind of the same name): its name becomes a value
    /// of `model.sequence_mixer`. Register before reading a config that names it.
    public static func register(_ kind: SequenceMixerKind) { table.register(kind) }
}

/// One kind of channel mixer (dense SwiGLU, mixture of experts); the table is `ChannelMixerKind.all`.
/// Whether a layer runs on any rows (inference) is its component's (`LayerComponent.rowwise`).
public struct ChannelMixerKind: MixerKind {
    /// The kind's name in reports and errors.
    public let name: String

    public init(name: String) { self.name = name }

    static let table = MixerKindTable<ChannelMixerKind>([.swiGLU, .moe])
    public static var all: [ChannelMixerKind] { table.all }
    public static func named(_ name: String) -> ChannelMixerKind? { table.named(name) }
    public static func register(_ kind: ChannelMixerKind) { table.register(kind) }
}

/// A row of a mixer-kind table: kinds are the same when their names are.
public protocol MixerKind: Sendable, Equatable, CustomStringConvertible { var name: String { get } }

extension MixerKind {
    public static func == (a: Self, b: Self) -> Bool { a.name == b.name }
    public var description: String { name }
}

/// A table of kinds by name, open to registration from any thread.
final class MixerKindTable<Kind: MixerKind>: @unchecked Sendable {
    private let lock = NSLock()
    private var kinds: [Kind]

    init(_ kinds: [Kind]) { self.kinds = kinds }

    var all: [Kind] { lock.withLock { kinds } }
    func named(_ name: String) -> Kind? { all.first { $0.name == name } }

    func register(_ kind: Kind) {
        lock.withLock {
            if let index = kinds.firstIndex(where: { $0.name == kind.name }) { kinds[index] = kind } else { kinds.append(kind) }
        }
    }
}
