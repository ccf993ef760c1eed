import Models

/// `parallel.zero` = 3: between uses each rank keeps only its owned pieces of the parameters
/// (`ZeroPartition`; the other pages of `parameters.values` are given back to the system). A
/// pass acquires each unit (embedding, block, head) before it runs, forward and backward: the
/// unit's pieces are all-gathered from their owners into `values`, and dropped again when the
/// pass releases it. While a unit computes, the next one's gather runs on the gradient
/// reducer's communication thread (the thread that owns the communicators during a step; the
/// Swift concurrency pool is never used); without overlap (sequence or expert axes
/// communicating on the training thread) the gather runs when the unit is acquired.
/// Training thread only.
final class ShardedParameters: ParameterResidency {
    let partition: ZeroPartition
    let reducer: GradientReducer
    /// Entry indices of each unit.
    let units: [ParameterUnit: Set<Int>]
    private var resident: Set<ParameterUnit> = []
    /// Units whose gather was handed to the communication thread, with its ticket.
    private var inFlight: [ParameterUnit: Int] = [:]

    init(partition: ZeroPartition, reducer: GradientReducer, model: TransformerLM) {
        self.partition = partition
        self.reducer = reducer
        let p = model.parameters
        let index = Dictionary(uniqueKeysWithValues: p.entries.enumerated().map { ($1.name, $0) })
        units = Dictionary(uniqueKeysWithValues: model.parameterUnits.map { unit in
            (unit, Set(model.parameterNames(of: unit).compactMap { index[$0] }))
        })
        partition.releaseParameters()
    }

    /// Floats of other ranks' pieces held at once at most: the two largest units (the one
    /// computing and the one being fetched).
    var gatheredFloats: Int {
        let sizes = units.values.map { $0.reduce(0) { $0 + partition.parameters.entries[$1].count - partition.owned[$1].count } }
        return sizes.sorted(by: >).prefix(2).reduce(0, +)
    }

    func acquire(_ unit: ParameterUnit, next: ParameterUnit?) throws {
        if let ticket = inFlight.removeValue(forKey: unit) {
            try reducer.wait(for: ticket)
            resident.insert(unit)
        } else if !resident.contains(unit) {
            try partition.allGatherParameters(only: units[unit]!)
            resident.insert(unit)
        }
        guard let next, !resident.contains(next), inFlight[next] == nil else { return }
        let partition = self.partition, entries = units[next]!
        if let ticket = reducer.submit(job: { try partition.allGatherParameters(only: entries) }) { inFlight[next] = ticket }
    }

    func release(_ unit: ParameterUnit) {
        guard resident.remove(unit) != nil else { return }
        // An entry of a unit still held or being fetched (the tied embedding) stays.
        let held = resident.union(inFlight.keys).reduce(into: Set<Int>()) { $0.formUnion(units[$1]!) }
        partition.releaseParameters(units[unit]!.subtracting(held).sorted())
    }

    /// Every parameter whole on every rank (a checkpoint's copy, a caller reading the model):
    /// collective over the reduction groups. `releaseAll` returns to the owned pieces.
    func gatherAll() throws { try partition.allGatherParameters() }

    func releaseAll() {
        resident.removeAll()
        partition.releaseParameters()
    }
}
