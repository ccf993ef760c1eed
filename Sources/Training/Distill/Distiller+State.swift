import Models
import TensorCore

/// Everything a distillation needs to continue exactly where it stopped, as named tensors.
///
/// - every student parameter under its own (Hugging Face) name;
/// - for stage k = 1, 2, 3 and each of its trained parameters P:
///   `distill.stage{k}.exp_avg.P` and `distill.stage{k}.exp_avg_sq.P` (AdamW's first and second
///   moments, shaped like P);
/// - `distill.stage{k}.steps`: the stage's step counter, shape [1] (a Float32 integer, exact
///   below 2²⁴ steps).
///
/// This is the distiller's state in memory (tests, tools); a run's checkpoints do not carry
/// it: they hold the student once, the current stage's moments as the optimizer file and the
/// counters as integers (`DistillRun+Checkpoints.swift`). The teacher is not part of it (it
/// never changes), nor is the batch source's position (the caller's data reader keeps its
/// own). Restoring into a fresh distiller with the same teacher,
/// student config and `distill.stage3_train`, then stepping on the same batches, gives the
/// numbers of an uninterrupted run bit for bit.
extension Distiller {
    static let stateCounterLimit = 1 << 24

    /// The state tensors' names and shapes, in export order.
    var stateLayout: [(name: String, shape: [Int])] {
        let p = student.parameters
        var layout = p.entries.map { ($0.name, $0.shape) }
        for stage in 1...3 {
            for name in parameters(ofStage: stage) {
                layout.append(("distill.stage\(stage).exp_avg.\(name)", p.entry(name).shape))
                layout.append(("distill.stage\(stage).exp_avg_sq.\(name)", p.entry(name).shape))
            }
            layout.append(("distill.stage\(stage).steps", [1]))
        }
        return layout
    }

    /// The student's parameters, every stage's AdamW moments and step counters (see above).
    public func exportState() -> StateDict {
        var pairs = student.parameters.stateDict().entries.map { ($0.name, $0.tensor) }
        let counters = [stage1StepsTaken, stage2StepsTaken, stage3StepsTaken]
        for stage in 1...3 {
            let optimizer = optimizers[stage - 1]
            for e in optimizer.trained {
                for (suffix, buffer) in [("exp_avg", optimizer.exponentialAverage), ("exp_avg_sq", optimizer.exponentialAverageSquares)] {
                    pairs.append(("distill.stage\(stage).\(suffix).\(e.name)", Tensor(shape: e.shape, scalars: Array(buffer.buffer[e.range]))))
                }
            }
            pairs.append(("distill.stage\(stage).steps", Tensor(shape: [1], scalars: [Float(counters[stage - 1])])))
        }
        return StateDict(pairs)
    }

    /// Restores what `exportState` gave. Every tensor is checked (present, shaped as this
    /// distiller needs, counters non-negative integers, nothing unknown) before anything
    /// changes; a failure throws the `DistillError` naming the tensor and leaves the
    /// distiller as it was.
    public func restore(state: StateDict) throws {
        let layout = stateLayout
        let known = Set(layout.map(\.name))
        if let extra = state.names.first(where: { !known.contains($0) }) { throw DistillError.unexpectedStateTensor(name: extra) }
        var counters: [Int] = []
        for (name, shape) in layout {
            guard let tensor = state[name] else { throw DistillError.missingStateTensor(name: name) }
            guard tensor.shape == shape else { throw DistillError.stateTensorShape(name: name, expected: shape, found: tensor.shape) }
            if name.hasSuffix(".steps") && name.hasPrefix("distill.stage") {
                let value = tensor.scalars[0]
                guard value >= 0, value == value.rounded(), value < Float(Self.stateCounterLimit) else {
                    throw DistillError.badStateValue(name: name, detail: "is \(value), not a step count")
                }
                counters.append(Int(value))
            }
        }
        let p = student.parameters
        for entry in p.entries {
            state[entry.name]!.withUnsafeBufferPointer { p.value(entry.name).update(from: $0.baseAddress!, count: entry.count) }
        }
        for stage in 1...3 {
            let optimizer = optimizers[stage - 1]
            for e in optimizer.trained {
                for (suffix, buffer) in [("exp_avg", optimizer.exponentialAverage), ("exp_avg_sq", optimizer.exponentialAverageSquares)] {
                    state["distill.stage\(stage).\(suffix).\(e.name)"]!.withUnsafeBufferPointer { (buffer.pointer + e.offset).update(from: $0.baseAddress!, count: e.count) }
                }
            }
            optimizer.setStepsTaken(counters[stage - 1])
        }
    }
}
