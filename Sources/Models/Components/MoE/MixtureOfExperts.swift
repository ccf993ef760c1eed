import Collectives
import Kernels
import TensorCore

/// The mixture-of-experts feed-forward of an `MoESpec` (Mixtral's `block_sparse_moe`), composed
/// of a router, a token dispatcher and this rank's experts:
///
/// 1. logits = x · gateᵀ (Float32); `TopKRouter` picks each token's k experts and gates;
/// 2. `RoutingPlan` gathers the routing statistics of the global batch (one small allgather
///    over the world when there are several ranks; this rank's tokens alone under the
///    context's `localRouting`), admits pairs under the capacity limit and
///    adds the weighted auxiliary losses ("moe_aux", "moe_z") and a `RoutingSummary`;
/// 3. `TokenDispatcher` sends each admitted pair's row to the rank holding its expert
///    (all-to-all over the expert axis), `SwiGLUExperts` runs one GEMM per expert and
///    projection, and the results come back the same way;
/// 4. out[t] += Σ over t's admitted pairs of gate · expert output (choice order).
///
/// Backward reverses each step (the all-to-alls included), and adds the auxiliary losses'
/// gradients: the objective is gradientScale · (Σ cross-entropy + N · Σ layers (aux · balance +
/// z · zLoss)) with N the global batch's tokens, i.e. mean CE + coefficients × losses when
/// gradientScale = 1/N.
///
/// Parameters: `block_sparse_moe.gate.weight` [E, d] (replicated) and this rank's experts
/// (`SwiGLUExperts`), sharded along the expert axis when `sharding.count > 1`.
public final class MixtureOfExperts: LayerComponent {
    public let spec: MoESpec
    public let dModel: Int
    public let sharding: ExpertSharding
    let residualStd: Double
    private var gate = BoundParameter()
    private var router: TopKRouter
    private let dispatcher: TokenDispatcher
    /// Seconds this layer has spent in all-to-all exchanges along the expert axis so far.
    public var exchangeSeconds: Double { dispatcher.exchangeSeconds }
    public var backwardCommunicates: Bool { sharding.count > 1 }
    private let experts: SwiGLUExperts
    private var plan: RoutingPlan?
    private var input: UnsafePointer<Float>?
    private var logits = GrowingBuffer(), expertInput = GrowingBuffer(), expertOutput = GrowingBuffer(), returned = GrowingBuffer()
    /// Row of each pair (token · k + choice) in the dispatcher's order, −1 when dropped.
    private var slot: [Int] = []

    public init(spec: MoESpec, dModel: Int, residualStd: Double, sharding: ExpertSharding = .whole) {
        precondition(spec.problems.isEmpty, "MixtureOfExperts: \(spec.problems.joined(separator: "; "))")
        precondition(spec.experts % sharding.count == 0, "MixtureOfExperts: \(spec.experts) experts over \(sharding.count) shards")
        self.spec = spec
        self.dModel = dModel
        self.sharding = sharding
        self.residualStd = residualStd
        router = TopKRouter(experts: spec.experts, topK: spec.topK)
        dispatcher = TokenDispatcher(experts: spec.experts, sharding: sharding)
        experts = SwiGLUExperts(dModel: dModel, hidden: spec.expertHidden, experts: sharding.experts(of: spec.experts))
    }

    static let gateName = "block_sparse_moe.gate.weight"

    public var declarations: [ParameterDeclaration] { declarations(of: experts.experts) }

    /// Every expert's declaration, as one rank holding them all would have them.
    public var globalDeclarations: [ParameterDeclaration] { declarations(of: 0..<spec.experts) }

    private func declarations(of held: Range<Int>) -> [ParameterDeclaration] {
        let sharded = held.count < spec.experts
        return [ParameterDeclaration(Self.gateName, [spec.experts, dModel], .normal(std: 0.02))]
            + SwiGLUExperts.declarations(experts: held, dModel: dModel, hidden: spec.expertHidden, residualStd: residualStd) { shape in
                sharded ? .sharded(axis: .expert, globalShape: shape, offset: shape.map { _ in 0 }) : .replicated
            }
    }

    public func bind(to parameters: ParameterSet, prefix: String) {
        gate = BoundParameter(parameters, prefix + Self.gateName)
        experts.bind(to: parameters, prefix: prefix)
    }

    private func communicators(_ c: PassContext) -> (batch: Communicator?, expert: Communicator?) {
        let expertRanks = c.grid?.size(of: .expert) ?? 1
        precondition(expertRanks == sharding.count,
                     "MixtureOfExperts: built for \(sharding.count) expert shards, run on a grid of \(expertRanks); build the model with its grid")
        guard let grid = c.grid else { return (nil, nil) }
        return (grid.world.size > 1 && !c.localRouting ? grid.world : nil, expertRanks > 1 ? grid.communicator(for: .expert) : nil)
    }

    public func forward(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) throws {
        let (n, d, E, k) = (c.rows, dModel, spec.experts, spec.topK)
        let comms = communicators(c)
        input = x
        plan = nil
        let scores = logits.ensure(n * E)
        Matmul.linearForward(x: x, weight: gate.value, y: scores, rows: n, inFeatures: d, outFeatures: E, threads: c.threads)
        router.route(logits: scores, rows: n)
        let plan = try RoutingPlan.make(router: router, spec: spec, comm: comms.batch)
        try dispatcher.plan(choices: router.choices, admitted: plan.admitted, comm: comms.expert)
        let (sent, received) = (dispatcher.sentRows, dispatcher.receivedRows)
        // One rank of experts: the rows are gathered straight into the experts' input and their
        // output is read in place (no dispatch or combine copies).
        let exchange = TokenDispatcher.exchanges(over: comms.expert) ? comms.expert : nil
        let (xs, ys) = (expertInput.ensure(received * d), expertOutput.ensure(received * d))
        let rows = exchange == nil ? xs : c.scratch.buffer("moe.rows", count: sent * d)
        let order = dispatcher.order
        c.threads.forRanges(order.count, minimumChunk: Self.rowsPerChunk) { range in
            for i in range { (rows + i * d).update(from: x + (order[i] / k) * d, count: d) }
        }
        let staging = exchange.map { _ in c.scratch.buffer("moe.staging", count: max(sent, received) * d) }
        if let exchange, let staging { try dispatcher.dispatch(rows, width: d, into: xs, staging: staging, comm: exchange) }
        experts.forward(xs, rowsPerExpert: dispatcher.rowsPerLocalExpert, output: ys, threads: c.threads, precision: c.precision)
        let back = exchange == nil ? ys : returned.ensure(sent * d)
        if let exchange, let staging { try dispatcher.combine(ys, width: d, into: back, staging: staging, comm: exchange) }
        slot = [Int](repeating: -1, count: n * k)
        for (i, pair) in dispatcher.order.enumerated() { slot[pair] = i }
        let (slot, gates) = (self.slot, router.gates)
        c.threads.forRanges(n, minimumChunk: Self.rowsPerChunk) { tokens in
            for t in tokens {
                for j in 0..<k where slot[t * k + j] >= 0 {
                    let (g, y, o) = (gates[t * k + j], back + slot[t * k + j] * d, out + t * d)
                    for i in 0..<d { o[i] += g * y[i] }
                }
            }
        }
        c.auxiliaryLosses.add("moe_aux", layer: layer, value: spec.auxLossCoefficient * plan.summary.balance)
        c.auxiliaryLosses.add("moe_z", layer: layer, value: spec.zLossCoefficient * plan.summary.zLoss)
        c.routing[layer] = plan.summary
        self.plan = plan
    }

    public func backward(_ dOut: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, layer: Int, context c: PassContext) throws {
        guard let x = input, let plan else { preconditionFailure("MixtureOfExperts.backward before forward") }
        let (n, d, E, k, F) = (c.rows, dModel, spec.experts, spec.topK, spec.expertHidden)
        let comms = communicators(c)
        let (sent, received) = (dispatcher.sentRows, dispatcher.receivedRows)
        let exchange = TokenDispatcher.exchanges(over: comms.expert) ? comms.expert : nil
        let dExpertOutput = c.scratch.buffer("moe.dExpertOutput", count: received * d)
        let dExpertInput = c.scratch.buffer("moe.dExpertInput", count: received * d)
        // One rank: the pairs' gradients are written as the experts' dy and their dx read in place.
        let dRows = exchange == nil ? dExpertOutput : c.scratch.buffer("moe.rows", count: sent * d)
        let work = c.scratch.buffer("moe.work", count: 3 * received * F)
        let back = exchange == nil ? UnsafePointer(expertOutput.pointer) : UnsafePointer(returned.pointer)
        // Gates: ∂/∂y_pair = gate · dOut[t]; ∂/∂gate = dOut[t] · y_pair.
        var dGates = [Float](repeating: 0, count: n * k)
        let (order, gates) = (dispatcher.order, router.gates)
        dGates.withUnsafeMutableBufferPointer { dGates in
            c.threads.forRanges(order.count, minimumChunk: Self.rowsPerChunk) { range in
                for i in range {
                    let pair = order[i]
                    let (g, o, row, y) = (gates[pair], dOut + (pair / k) * d, dRows + i * d, back + i * d)
                    var dot: Float = 0
                    for j in 0..<d { row[j] = g * o[j]; dot += o[j] * y[j] }
                    dGates[pair] = dot
                }
            }
        }
        let staging = exchange.map { _ in c.scratch.buffer("moe.staging", count: max(sent, received) * d) }
        if let exchange, let staging { try dispatcher.dispatch(dRows, width: d, into: dExpertOutput, staging: staging, comm: exchange) }
        experts.backward(dExpertOutput, dx: dExpertInput, work: work, threads: c.threads, precision: c.precision)
        if let exchange, let staging { try dispatcher.combine(dExpertInput, width: d, into: dRows, staging: staging, comm: exchange) }
        let dPairs = exchange == nil ? UnsafePointer(dExpertInput) : UnsafePointer(dRows)
        // Router: gates, the balance loss through P (∂(N·aux·E·Σ f·P)/∂p_te = aux·E·f_e) and the z-loss.
        let scale = Double(c.gradientScale)
        let dProbability = plan.routedFraction.map { Float(scale * spec.auxLossCoefficient * Double(E) * $0) }
        let dLogits = c.scratch.buffer("moe.dLogits", count: n * E)
        dGates.withUnsafeBufferPointer {
            router.backward(dGates: $0.baseAddress!, dProbability: dProbability, zWeight: Float(scale * spec.zLossCoefficient), dLogits: dLogits)
        }
        Matmul.linearBackward(x: x, weight: gate.value, dy: dLogits, dx: dx, dWeight: gate.gradient,
                              rows: n, inFeatures: d, outFeatures: E, threads: c.threads)
        let slot = self.slot
        c.threads.forRanges(n, minimumChunk: Self.rowsPerChunk) { tokens in
            for t in tokens {
                for j in 0..<k where slot[t * k + j] >= 0 {
                    let (g, o) = (dPairs + slot[t * k + j] * d, dx + t * d)
                    for i in 0..<d { o[i] += g[i] }
                }
            }
        }
    }

    /// Rows (of d_model floats) per chunk when the row copies and sums are split over threads:
    /// each row is computed alone, so the split never changes a result.
    static let rowsPerChunk = 128

    /// The renormalised gates of the last forward pass (tokens × k), for tests.
    var routerGates: [Float] { router.gates }

    /// The router's product and the k experts each token runs (dropless).
    public var matmulFlopsPerToken: Double {
        2.0 * Double(dModel * spec.experts) + Double(spec.topK) * experts.matmulFlopsPerPair
    }
}

extension ChannelMixerKind {
    public static let moe = ChannelMixerKind(name: "moe")
}

extension MoESpec: ChannelMixerSettings {
    public var kind: ChannelMixerKind { .moe }

    public func makeComponent(dModel: Int, residualStd: Double, sharding: ExpertSharding) -> LayerComponent {
        MixtureOfExperts(spec: self, dModel: dModel, residualStd: residualStd, sharding: sharding)
    }

    public func problems(at: String) -> [String] { problems.map { $0 + at } }

    public var phiMambaMLP: [String: Any] {
        ["intermediate_size": expertHidden, "hidden_act": "silu", "num_local_experts": experts, "num_experts_per_tok": topK]
    }
}
