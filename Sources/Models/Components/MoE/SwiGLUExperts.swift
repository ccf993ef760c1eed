import Dispatch
import Kernels
import TensorCore

/// This rank's SwiGLU experts (Mixtral's `experts.N`): `w2(silu(w1(x)) ⊙ w3(x))`, run as grouped
/// matrix products: the rows routed to expert N are one consecutive block, and each projection
/// is one GEMM per expert over its block (no per-token work, no padding; an expert with no
/// rows does nothing).
///
/// Parameters (names relative to the block, N the global expert index): `experts.N.w1.weight`
/// (gate, [F, d]), `experts.N.w2.weight` (down, [d, F]), `experts.N.w3.weight` (up, [F, d]).
final class SwiGLUExperts {
    let dModel: Int
    let hidden: Int
    /// Global indices of the experts held here.
    let experts: Range<Int>
    private var w1: [BoundParameter] = [], w2: [BoundParameter] = [], w3: [BoundParameter] = []
    private var gate = GrowingBuffer(), up = GrowingBuffer(), activation = GrowingBuffer()
    private var input: UnsafePointer<Float>?
    private var rowsPerExpert: [Int] = []

    init(dModel: Int, hidden: Int, experts: Range<Int>) {
        self.dModel = dModel
        self.hidden = hidden
        self.experts = experts
    }

    static func name(_ expert: Int, _ projection: String) -> String { "block_sparse_moe.experts.\(expert).\(projection).weight" }

    /// Declarations of `experts` with `placement` (`residualStd` for w2, which writes into the residual stream).
    static func declarations(experts: Range<Int>, dModel: Int, hidden: Int, residualStd: Double,
                             placement: (_ shape: [Int]) -> ParameterPlacement) -> [ParameterDeclaration] {
        experts.flatMap { n in
            [ParameterDeclaration(name(n, "w1"), [hidden, dModel], .normal(std: 0.02), placement: placement([hidden, dModel])),
             ParameterDeclaration(name(n, "w2"), [dModel, hidden], .normal(std: residualStd), placement: placement([dModel, hidden])),
             ParameterDeclaration(name(n, "w3"), [hidden, dModel], .normal(std: 0.02), placement: placement([hidden, dModel]))]
        }
    }

    func bind(to parameters: ParameterSet, prefix: String) {
        w1 = experts.map { BoundParameter(parameters, prefix + Self.name($0, "w1")) }
        w2 = experts.map { BoundParameter(parameters, prefix + Self.name($0, "w2")) }
        w3 = experts.map { BoundParameter(parameters, prefix + Self.name($0, "w3")) }
    }

    /// y (rows × d) = experts(x (rows × d)), where the first rowsPerExpert[0] rows go to the first
    /// local expert, and so on. `x` must stay unchanged until `backward`.
    func forward(_ x: UnsafePointer<Float>, rowsPerExpert: [Int], output y: UnsafeMutablePointer<Float>, threads: KernelThreads,
                 precision: ComputePrecision) {
        let (d, f) = (dModel, hidden)
        let rows = rowsPerExpert.reduce(0, +)
        self.rowsPerExpert = rowsPerExpert
        input = x
        let (g, u, a) = (gate.ensure(rows * f), up.ensure(rows * f), activation.ensure(rows * f))
        let (w1, w2, w3) = (self.w1, self.w2, self.w3)
        Self.forEachExpert(rowsPerExpert, threads: threads) { l, start, m, one in
            Matmul.linearForward(x: x + start * d, weight: w1[l].value, y: g + start * f, rows: m, inFeatures: d, outFeatures: f, threads: one, precision: precision)
            Matmul.linearForward(x: x + start * d, weight: w3[l].value, y: u + start * f, rows: m, inFeatures: d, outFeatures: f, threads: one, precision: precision)
            if precision == .bf16 {   // the activation stored as bf16 bits: only products read it
                let bits = SwiGLUFeedForward.bits(a) + start * f
                SwiGLU.forward(gate: g + start * f, up: u + start * f, bf16: bits, count: m * f, threads: one)
                BF16Matmul.linearForward(x: .bf16(bits), weight: w2[l].value, y: y + start * d, rows: m, inFeatures: f, outFeatures: d, threads: one)
                return
            }
            SwiGLU.forward(gate: g + start * f, up: u + start * f, out: a + start * f, count: m * f, threads: one)
            Matmul.linearForward(x: a + start * f, weight: w2[l].value, y: y + start * d, rows: m, inFeatures: f, outFeatures: d, threads: one)
        }
    }

    /// Runs `body(expert, firstRow, rows, threads)` for every local expert with rows. With more
    /// than one thread the experts are the parallelism: each thread takes a set of experts and
    /// runs each one's products alone (the many small per-expert products cost more to split
    /// and synchronise than they gain). The sets balance rows greedily — the largest expert
    /// first, each to the thread with the fewest rows so far — which routing's uneven loads
    /// need (contiguous groups left a thread idle for up to half an expert). An expert's
    /// products are the same calls whichever thread runs them, so results do not depend on the
    /// thread count.
    static func forEachExpert(_ rowsPerExpert: [Int], threads: KernelThreads,
                              _ body: (_ expert: Int, _ start: Int, _ rows: Int, _ threads: KernelThreads) -> Void) {
        var starts = [0]
        for m in rowsPerExpert { starts.append(starts.last! + m) }
        let groups = min(threads.count, rowsPerExpert.filter { $0 > 0 }.count)
        guard groups > 1 else {
            for (l, m) in rowsPerExpert.enumerated() where m > 0 { body(l, starts[l], m, threads) }
            return
        }
        let sets = balancedSets(rowsPerExpert, groups: groups)
        DispatchQueue.concurrentPerform(iterations: groups) { g in
            for l in sets[g] { body(l, starts[l], rowsPerExpert[l], .single) }
        }
    }

    /// The experts with rows split into `groups` sets of about equal rows (longest first, each
    /// to the least loaded set; ties to the lower index), each set in expert order.
    static func balancedSets(_ rowsPerExpert: [Int], groups: Int) -> [[Int]] {
        var sets = [[Int]](repeating: [], count: groups), load = [Int](repeating: 0, count: groups)
        let order = rowsPerExpert.indices.filter { rowsPerExpert[$0] > 0 }
            .sorted { rowsPerExpert[$0] != rowsPerExpert[$1] ? rowsPerExpert[$0] > rowsPerExpert[$1] : $0 < $1 }
        for l in order {
            let g = load.indices.min { load[$0] != load[$1] ? load[$0] < load[$1] : $0 < $1 }!
            sets[g].append(l)
            load[g] += rowsPerExpert[l]
        }
        return sets.map { $0.sorted() }
    }

    /// dx (rows × d, overwritten) from dy (rows × d); adds the experts' weight gradients.
    /// `work` holds 3 · rows · F floats.
    func backward(_ dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, work: UnsafeMutablePointer<Float>, threads: KernelThreads,
                  precision: ComputePrecision) {
        guard let x = input else { preconditionFailure("SwiGLUExperts.backward before forward") }
        let (d, f) = (dModel, hidden)
        let rows = rowsPerExpert.reduce(0, +)
        let (dActivation, dGate, dUp) = (work, work + rows * f, work + 2 * rows * f)
        let (w1, w2, w3) = (self.w1, self.w2, self.w3)
        let (activation, gate, up) = (self.activation.pointer, self.gate.pointer, self.up.pointer)
        if precision == .bf16 {
            backwardBF16(dy, dx: dx, dGate: SwiGLUFeedForward.bits(dGate), dUp: SwiGLUFeedForward.bits(dUp), dActivation: dActivation,
                         x: x, threads: threads)
            return
        }
        Self.forEachExpert(rowsPerExpert, threads: threads) { l, start, m, one in
            Matmul.linearBackward(x: activation + start * f, weight: w2[l].value, dy: dy + start * d, dx: dActivation + start * f,
                                  dWeight: w2[l].gradient, rows: m, inFeatures: f, outFeatures: d, threads: one, precision: precision)
            SwiGLU.backward(gate: gate + start * f, up: up + start * f, dOut: dActivation + start * f,
                            dGate: dGate + start * f, dUp: dUp + start * f, count: m * f, threads: one)
            Matmul.linearBackward(x: x + start * d, weight: w1[l].value, dy: dGate + start * f, dx: dx + start * d, dWeight: w1[l].gradient,
                                  rows: m, inFeatures: d, outFeatures: f, threads: one, precision: precision)
            Matmul.linearBackward(x: x + start * d, weight: w3[l].value, dy: dUp + start * f, dx: dx + start * d, dWeight: w3[l].gradient,
                                  rows: m, inFeatures: d, outFeatures: f, accumulateInput: true, threads: one, precision: precision)
        }
    }

    /// `backward` in bf16: the activation (stored by `forward`), dGate and dUp are bf16 bits.
    private func backwardBF16(_ dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, dGate: UnsafeMutablePointer<UInt16>,
                              dUp: UnsafeMutablePointer<UInt16>, dActivation: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                              threads: KernelThreads) {
        let (d, f) = (dModel, hidden)
        let (w1, w2, w3) = (self.w1, self.w2, self.w3)
        let (activation, gate, up) = (SwiGLUFeedForward.bits(self.activation.pointer), self.gate.pointer, self.up.pointer)
        Self.forEachExpert(rowsPerExpert, threads: threads) { l, start, m, one in
            let (g, u) = (dGate + start * f, dUp + start * f)
            BF16Matmul.linearBackward(x: .bf16(activation + start * f), weight: w2[l].value, dy: .float(dy + start * d),
                                      dx: dActivation + start * f, dWeight: w2[l].gradient, rows: m, inFeatures: f, outFeatures: d, threads: one)
            SwiGLU.backward(gate: gate + start * f, up: up + start * f, dOut: dActivation + start * f, bf16: g, dUp: u, count: m * f, threads: one)
            BF16Matmul.linearBackward(x: .float(x + start * d), weight: w1[l].value, dy: .bf16(g), dx: dx + start * d,
                                      dWeight: w1[l].gradient, rows: m, inFeatures: d, outFeatures: f, threads: one)
            BF16Matmul.linearBackward(x: .float(x + start * d), weight: w3[l].value, dy: .bf16(u), dx: dx + start * d,
                                      dWeight: w3[l].gradient, rows: m, inFeatures: d, outFeatures: f, accumulateInput: true, threads: one)
        }
    }

    /// Forward FLOPs of one (token, expert) pair.
    var matmulFlopsPerPair: Double { 2.0 * Double(dModel) * Double(3 * hidden) }
}

/// A Float32 buffer that keeps its contents' address until it must grow (a component's cache
/// whose size changes from pass to pass, as the rows routed to experts do).
struct GrowingBuffer {
    private var storage = FloatBuffer(count: 0)

    /// At least `count` floats (contents unspecified after growing).
    mutating func ensure(_ count: Int) -> UnsafeMutablePointer<Float> {
        if storage.count < count { storage = FloatBuffer(count: count + count / 4) }
        return storage.pointer
    }

    var pointer: UnsafeMutablePointer<Float> { storage.pointer }
}
