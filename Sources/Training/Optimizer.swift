import Collectives
import Kernels
import Models
import TensorCore

/// AdamW over a model's parameters: owns the moments and takes the step.
///
/// The moments have the parameters' layout (one flat buffer each), so a rank holds the moments
/// of exactly the parameters it holds, placed the same way.
public final class Optimizer {
    public let rule: AdamW
    public let parameters: ParameterSet
    /// First and second moments, laid out like `parameters.values`.
    let exponentialAverage: FloatBuffer
    let exponentialAverageSquares: FloatBuffer
    /// The parameters `step` updates: all of them, or those a distillation stage trains.
    public let trained: [ParameterSet.Entry]
    /// Steps taken (AdamW's bias correction uses it).
    public private(set) var stepsTaken = 0

    /// `training`: the names of the parameters to update (nil: all); the others keep their
    /// values and zero moments.
    public init(rule: AdamW, parameters: ParameterSet, training names: [String]? = nil) {
        self.rule = rule
        self.parameters = parameters
        trained = names.map { $0.map(parameters.entry) } ?? parameters.entries
        exponentialAverage = FloatBuffer(count: parameters.count)
        exponentialAverageSquares = FloatBuffer(count: parameters.count)
    }

    /// One update at `learningRate` from the current gradients times `gradientScale` (the
    /// clipping factor; the gradients themselves are not changed).
    public func step(learningRate: Float, gradientScale: Float = 1, threads: KernelThreads) {
        stepsTaken += 1
        let p = parameters
        for e in trained {
            rule.update(parameters: p.values.pointer + e.offset, gradients: p.gradients.pointer + e.offset,
                        m: exponentialAverage.pointer + e.offset, v: exponentialAverageSquares.pointer + e.offset,
                        count: e.count, step: stepsTaken, learningRate: learningRate, decay: e.decays,
                        gradientScale: gradientScale, threads: threads)
        }
    }

    /// The moments as tensors `NAME.exp_avg` and `NAME.exp_avg_sq`, one pair per parameter.
    public func stateDict() -> StateDict {
        StateDict(parameters.entries.flatMap { e in
            [(e.name + ".exp_avg", Tensor(shape: e.shape, scalars: Array(exponentialAverage.buffer[e.range]))),
             (e.name + ".exp_avg_sq", Tensor(shape: e.shape, scalars: Array(exponentialAverageSquares.buffer[e.range])))]
        })
    }

    /// Restores the moments (every parameter's pair, exact shapes) and the step count.
    /// `global`: every parameter of the model when this rank holds a shard of it; their moments
    /// must all be present (other ranks receive theirs from this dict).
    public func load(_ dict: StateDict, stepsTaken: Int, source: String, global: [ParameterDeclaration] = []) throws {
        for d in global {
            for suffix in [".exp_avg", ".exp_avg_sq"] {
                guard let tensor = dict[d.name + suffix] else { throw ModelError.missingTensor(name: d.name + suffix, source: source) }
                guard tensor.shape == d.shape else {
                    throw ModelError.shapeMismatch(name: d.name + suffix, expected: d.shape, found: tensor.shape, source: source)
                }
            }
        }
        for e in parameters.entries {
            for (suffix, buffer) in [(".exp_avg", exponentialAverage), (".exp_avg_sq", exponentialAverageSquares)] {
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
