import Collectives
import Kernels
import Models
import TensorCore

/// AdamW over a model's parameters: owns the moments and takes the step.
///
/// The moments have the parameters' layout (one flat buffer each), so a rank holds the moments
/// of exactly the parameters it holds, placed the same way; under `parallel.zero` ≥ 1 (a
/// `ZeroPartition`) only those of its owned pieces, packed (compact), and it updates only those.
public final class Optimizer {
    public let rule: AdamW
    public let parameters: ParameterSet
    /// First and second moments, laid out like `parameters.values` (compact with a partition).
    let exponentialAverage: FloatBuffer
    let exponentialAverageSquares: FloatBuffer
    /// The parameters `step` updates: all of them, or those a distillation stage trains.
    public let trained: [ParameterSet.Entry]
    /// The entries' indices in `parameters`, in `trained`'s order.
    private let trainedIndices: [Int]
    /// This rank's owned pieces (nil: it updates everything it holds).
    let partition: ZeroPartition?
    /// Steps taken (AdamW's bias correction uses it).
    public private(set) var stepsTaken = 0

    /// `training`: the names of the parameters to update (nil: all); the others keep their
    /// values and zero moments.
    public convenience init(rule: AdamW, parameters: ParameterSet, training names: [String]? = nil) {
        self.init(rule: rule, parameters: parameters, training: names, partition: nil)
    }

    init(rule: AdamW, parameters: ParameterSet, training names: [String]? = nil, partition: ZeroPartition?) {
        self.rule = rule
        self.parameters = parameters
        self.partition = partition
        trained = names.map { $0.map(parameters.entry) } ?? parameters.entries
        let position = Dictionary(uniqueKeysWithValues: parameters.entries.enumerated().map { ($1.name, $0) })
        trainedIndices = trained.map { position[$0.name]! }
        exponentialAverage = FloatBuffer(count: partition?.ownedCount ?? parameters.count)
        exponentialAverageSquares = FloatBuffer(count: partition?.ownedCount ?? parameters.count)
    }

    /// One update at `learningRate` from the current gradients times `gradientScale` (the
    /// clipping factor; the gradients themselves are not changed).
    public func step(learningRate: Float, gradientScale: Float = 1, threads: KernelThreads) {
        stepsTaken += 1
        let p = parameters
        for (e, index) in zip(trained, trainedIndices) {
            let range = partition?.owned[index] ?? e.range, moments = partition?.compactOffset[index] ?? e.offset
            guard !range.isEmpty else { continue }
            rule.update(parameters: p.values.pointer + range.lowerBound, gradients: p.gradients.pointer + range.lowerBound,
                        m: exponentialAverage.pointer + moments, v: exponentialAverageSquares.pointer + moments,
                        count: range.count, step: stepsTaken, learningRate: learningRate, decay: e.decays,
                        gradientScale: gradientScale, threads: threads)
        }
    }

    /// Both moments laid out like the parameters, for a checkpoint: the buffers themselves, or
    /// with a partition every rank's pieces gathered into new ones (collective over the groups).
    func wholeMoments() throws -> [FloatBuffer] {
        guard let partition else { return buffers }
        return try buffers.map { compact in
            let whole = FloatBuffer(count: parameters.count)
            try partition.allGather(into: whole.pointer) { UnsafePointer(compact.pointer + partition.compactOffset[$0]) }
            return whole
        }
    }

    /// Buffers laid out like the parameters to resume into (`load(_:into:...)`, broadcast), then
    /// handed to `keep`: the moment buffers themselves without a partition.
    func resumeBuffers() -> [FloatBuffer] {
        partition == nil ? buffers : [FloatBuffer(count: parameters.count), FloatBuffer(count: parameters.count)]
    }

    /// Keeps this rank's owned pieces of moments laid out like the parameters (`resumeBuffers`).
    func keep(_ whole: [FloatBuffer]) {
        guard let partition else { return }
        for (compact, full) in zip(buffers, whole) {
            for (index, range) in partition.owned.enumerated() {
                (compact.pointer + partition.compactOffset[index]).update(from: full.pointer + range.lowerBound, count: range.count)
            }
        }
    }

    /// The moments as tensors `NAME.exp_avg` and `NAME.exp_avg_sq`, one pair per parameter
    /// (without a partition: `wholeMoments` gathers them first).
    public func stateDict() -> StateDict {
        precondition(partition == nil, "Optimizer.stateDict: the moments are partitioned; gather them with wholeMoments()")
        return StateDict(parameters.entries.flatMap { e in
            [(e.name + ".exp_avg", Tensor(shape: e.shape, scalars: Array(exponentialAverage.buffer[e.range]))),
             (e.name + ".exp_avg_sq", Tensor(shape: e.shape, scalars: Array(exponentialAverageSquares.buffer[e.range])))]
        })
    }

    /// Restores the moments (every parameter's pair, exact shapes) and the step count.
    /// `global`: every parameter of the model when this rank holds a shard of it; their moments
    /// must all be present (other ranks receive theirs from this dict).
    public func load(_ dict: StateDict, stepsTaken: Int, source: String, global: [ParameterDeclaration] = []) throws {
        precondition(partition == nil, "Optimizer.load: the moments are partitioned; load into resumeBuffers()")
        try load(dict, into: buffers, stepsTaken: stepsTaken, source: source, global: global)
    }

    /// `load`, into `buffers` laid out like the parameters (`resumeBuffers()`).
    func load(_ dict: StateDict, into buffers: [FloatBuffer], stepsTaken: Int, source: String, global: [ParameterDeclaration] = []) throws {
        for d in global {
            for suffix in [".exp_avg", ".exp_avg_sq"] {
                guard let tensor = dict[d.name + suffix] else { throw ModelError.missingTensor(name: d.name + suffix, source: source) }
                guard tensor.shape == d.shape else {
                    throw ModelError.shapeMismatch(name: d.name + suffix, expected: d.shape, found: tensor.shape, source: source)
                }
            }
        }
        for e in parameters.entries {
            for (suffix, buffer) in zip([".exp_avg", ".exp_avg_sq"], buffers) {
                guard let tensor = dict[e.name + suffix] else { throw ModelError.missingTensor(name: e.name + suffix, source: source) }
                guard tensor.shape == e.shape else {
                    throw ModelError.shapeMismatch(name: e.name + suffix, expected: e.shape, found: tensor.shape, source: source)
                }
                tensor.withUnsafeBufferPointer { (buffer.pointer + e.offset).update(from: $0.baseAddress!, count: e.count) }
            }
        }
        self.stepsTaken = stepsTaken
    }

    /// Both moment buffers, for broadcasting a loaded state to other ranks.
    public var buffers: [FloatBuffer] { [exponentialAverage, exponentialAverageSquares] }

    /// Sets the step count after the moments arrived by broadcast.
    public func setStepsTaken(_ steps: Int) { stepsTaken = steps }
}
