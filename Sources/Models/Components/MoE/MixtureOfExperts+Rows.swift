import Kernels
import TensorCore

/// The mixture of experts on any rows (a prompt, or one generated token), with buffers from the
/// inference context's scratch: each token is routed by the same `TopKRouter` as in training and
/// runs through its top-k experts, dropless (no capacity limit at inference, as in Mixtral), and
/// the training cache is left alone.
///
/// With a communicator of N ranks (`tessera generate` under mpirun), rank r runs the experts
/// e with e mod N = r on the rows routed to them, exactly as one rank runs them (the same rows,
/// the same products); the outputs meet in one all-reduce of a buffer where each (token, choice)
/// slot has one writer and zeros elsewhere, so the sum is exact, and every rank adds them in
/// choice order: every rank gets the bits one rank gets.
extension MixtureOfExperts: RowwiseChannelMixer {
    public func forwardRows(_ x: UnsafePointer<Float>, addingTo out: UnsafeMutablePointer<Float>, rows n: Int,
                     parameters: ParameterSet, prefix: String, context c: DecodeContext) throws {
        precondition(sharding == .whole, "MixtureOfExperts.forwardRows: inference holds every expert (built without a grid)")
        let (d, E, k, F) = (dModel, spec.experts, spec.topK, spec.expertHidden)
        let logits = c.scratch.buffer("moe.rows.logits", count: n * E)
        Matmul.linearForward(x: x, weight: parameters.value(prefix + Self.gateName), y: logits, rows: n, inFeatures: d, outFeatures: E,
                             threads: c.threads)
        var router = TopKRouter(experts: E, topK: k)
        router.route(logits: logits, rows: n)
        let (ranks, rank) = (c.communicator?.size ?? 1, c.communicator?.rank ?? 0)
        // slots (n · k, d): the output of pair (token t, choice j) in row t · k + j.
        var slots = [Float](repeating: 0, count: n * k * d)
        let rowsIn = c.scratch.buffer("moe.rows.in", count: n * d), rowsOut = c.scratch.buffer("moe.rows.out", count: n * d)
        let (gate, up) = (c.scratch.buffer("moe.rows.gate", count: n * F), c.scratch.buffer("moe.rows.up", count: n * F))
        for e in 0..<E where e % ranks == rank {
            let pairs = (0..<(n * k)).filter { router.choices[$0] == e }   // in token order, as the dispatcher sends them
            guard !pairs.isEmpty else { continue }
            let m = pairs.count
            for (i, pair) in pairs.enumerated() { (rowsIn + i * d).update(from: x + (pair / k) * d, count: d) }
            let weight = { (projection: String) in parameters.value(prefix + SwiGLUExperts.name(e, projection)) }
            Matmul.linearForward(x: rowsIn, weight: weight("w1"), y: gate, rows: m, inFeatures: d, outFeatures: F, threads: c.threads)
            Matmul.linearForward(x: rowsIn, weight: weight("w3"), y: up, rows: m, inFeatures: d, outFeatures: F, threads: c.threads)
            SwiGLU.forward(gate: gate, up: up, out: gate, count: m * F, threads: c.threads)
            Matmul.linearForward(x: gate, weight: weight("w2"), y: rowsOut, rows: m, inFeatures: F, outFeatures: d, threads: c.threads)
            slots.withUnsafeMutableBufferPointer { s in
                for (i, pair) in pairs.enumerated() { (s.baseAddress! + pair * d).update(from: rowsOut + i * d, count: d) }
            }
        }
        if ranks > 1, let comm = c.communicator { try comm.allReduce(&slots, op: .sum) }
        let gates = router.gates
        slots.withUnsafeBufferPointer { s in
            for t in 0..<n {
                for j in 0..<k {
                    let (g, y, o) = (gates[t * k + j], s.baseAddress! + (t * k + j) * d, out + t * d)
                    for i in 0..<d { o[i] += g * y[i] }
                }
            }
        }
    }
}
