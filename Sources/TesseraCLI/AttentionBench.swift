import ArgumentParser
import Collectives
import Foundation
import Kernels
import Models
import TensorCore

/// `tessera bench attention`: one attention call, forward or forward + backward, by kernel
/// (docs/BENCHMARKS.md): B = 1, H = 8, D = 64, over the sequence lengths N.
struct AttentionBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention",
        abstract: "Attention forward / forward+backward (ms) and the memory one call adds (peak_growth_mib).")
    @OptionGroup var bench: BenchOptions
    @OptionGroup var world: WorldOptions
    @Option(parsing: .upToNextOption, help: "Sequence lengths.")
    var n: [Int] = [512, 1024, 2048, 4096]
    @Option(parsing: .upToNextOption, help: "fwd, fwdbwd.")
    var mode: [String] = ["fwd", "fwdbwd"]
    @Option(parsing: .upToNextOption, help: "Kernels: flash (tiled, memory linear in N), naive (materialised B·H·N² probabilities); ring, ulysses (the sequence split over every rank of the world: run under mpirun or tessera launch).")
    var impl: [String] = ["flash", "naive"]
    @Flag(help: "Split each sequence over every rank of the world (zigzag shards) and measure ring attention: the same as --impl ring.")
    var ranks = false
    @Option(help: "Causal masking (the naive kernel is causal only).")
    var causal = true
    @Option(help: "Flash query rows per tile (default: the kernel's choice for N).")
    var queryTile: Int?
    @Option(help: "Flash keys per tile (default: the kernel's choice for N).")
    var keyTile: Int?
    @Option(help: "Flash products' inputs: fp32, or bf16 (rounded, Float32 accumulation; train.precision: bf16).")
    var precision = "fp32"

    static let (B, H, D) = (1, 8, 64)
    /// The naive kernel's probabilities are refused beyond this (N = 8192 needs 2 GiB).
    static let naiveLimitBytes = 4 << 30

    func validate() throws {
        try requireAtLeast(1, n, option: "n")
        if ComputePrecision(rawValue: precision) == nil { throw ValidationError("--precision \(precision): choose fp32 or bf16") }
        if precision != "fp32", impl != ["flash"] { throw ValidationError("--precision \(precision) measures --impl flash only") }
        if let bad = mode.first(where: { !["fwd", "fwdbwd"].contains($0) }) { throw ValidationError("--mode \(bad): choose fwd or fwdbwd") }
        if let bad = impl.first(where: { !["flash", "naive", "ring", "ulysses"].contains($0) }) {
            throw ValidationError("--impl \(bad): choose flash, naive, ring or ulysses")
        }
        if impl.contains("naive") {
            if !causal { throw ValidationError("--impl naive is causal only; use --impl flash with --causal false") }
            if let long = n.first(where: { Self.B * Self.H * $0 * $0 * 4 > Self.naiveLimitBytes }) {
                let gib = Double(Self.B * Self.H * long * long * 4) / Double(1 << 30)
                throw ValidationError("--impl naive at N=\(long) needs \(gib) GiB for its probabilities (B·H·N² floats); measure N above 8192 with --impl flash")
            }
        }
    }

    func run() throws {
        let kernels = ranks ? ["ring"] : impl
        if kernels.contains(where: { $0 == "ring" || $0 == "ulysses" }) {
            try runSequenceParallel(kernels.filter { $0 == "ring" || $0 == "ulysses" })
            return
        }
        let comm = SingleProcessCommunicator()
        let threads = KernelThreads(bench.threads)
        let (B, H, D) = (Self.B, Self.H, Self.D)
        for length in n {
            let size = B * length * H * D
            let q = FloatBuffer(count: size), k = FloatBuffer(count: size), v = FloatBuffer(count: size), o = FloatBuffer(count: size)
            var rng = RNG(seed: 5)
            for i in 0..<size { q[i] = Float(rng.nextNormal()); k[i] = Float(rng.nextNormal()); v[i] = Float(rng.nextNormal()) }
            let dO = FloatBuffer(count: size), dq = FloatBuffer(count: size), dk = FloatBuffer(count: size), dv = FloatBuffer(count: size)
            for i in 0..<size { dO[i] = 1 }
            // Touch the outputs now (large buffers are mapped lazily), so the growth measured
            // below is the kernel's own memory, not the first write of its outputs.
            for buffer in [o, dq, dk, dv] { buffer.zero() }
            for kernel in impl {
                // What the forward pass keeps for backward: the probabilities (naive) or the logsumexp (flash).
                let call: (_ saved: UnsafeMutablePointer<Float>, _ backward: Bool) -> Void
                let savedCount: Int
                if kernel == "naive" {
                    let attention = CausalAttention(batch: B, length: length, heads: H, kvHeads: H, headDim: D)
                    savedCount = attention.probabilityCount
                    call = { p, backward in
                        attention.forward(q: q.pointer, k: k.pointer, v: v.pointer, o: o.pointer, probabilities: p, threads: threads)
                        if backward {
                            attention.backward(q: q.pointer, k: k.pointer, v: v.pointer, o: o.pointer, probabilities: p, dO: dO.pointer,
                                               dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, threads: threads)
                        }
                    }
                } else {
                    let attention = FlashAttention(batch: B, queryLength: length, keyLength: length, heads: H, kvHeads: H, headDim: D,
                                                   causal: causal, queryTile: queryTile ?? FlashAttention.defaultQueryTile,
                                                   keyTile: keyTile ?? FlashAttention.defaultKeyTile)
                    savedCount = attention.logsumexpCount
                    let format = ComputePrecision(rawValue: precision)!
                    call = { l, backward in
                        attention.forward(q: q.pointer, k: k.pointer, v: v.pointer, o: o.pointer, logsumexp: l, threads: threads, precision: format)
                        if backward {
                            attention.backward(q: q.pointer, k: k.pointer, v: v.pointer, o: o.pointer, logsumexp: l, dO: dO.pointer,
                                               dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, threads: threads, precision: format)
                        }
                    }
                }
                for m in mode {
                    let backward = m == "fwdbwd"
                    // Memory: one call beyond its inputs and outputs (q, k, v, o; dO, dq, dk, dv), i.e. the state
                    // kept for backward (allocated and zeroed as the model's activation cache does) and the
                    // kernel's workspaces, sampled from /proc/self/statm every millisecond (ResidentMemory).
                    ResidentMemory.releaseFreeMemory()
                    let growth = ResidentMemory.peakGrowth {
                        let saved = FloatBuffer(count: savedCount)
                        call(saved.pointer, backward)
                        return saved
                    }
                    let saved = FloatBuffer(count: savedCount)
                    let seconds = try BenchReport.time(runs: bench.runs, warmup: bench.warmup) { call(saved.pointer, backward) }
                    try BenchReport.emit("attention", impl: kernel, threads: bench.threads, comm: comm,
                                         shape: ["B": B, "H": H, "D": D, "N": length, "causal": causal, "mode": m, "precision": precision],
                                         unit: "ms", values: seconds.map { $0 * 1000 },
                                         extra: growth.map { ["peak_growth_mib": BenchReport.round4(Double($0) / Double(1 << 20))] } ?? [:])
                }
            }
        }
    }

    /// Ring or Ulysses attention with each sequence of N tokens split over every rank of the
    /// world (zigzag: N / P tokens per rank), timed by rank 0's clock; `peak_growth_mib` is the
    /// largest rank's, measured on a call after a first one (so the transport's one-time
    /// buffers are not counted), and `peak_rss_mib` (the whole process) shows the per-rank memory.
    func runSequenceParallel(_ kernels: [String]) throws {
        let comm = try world.makeWorld()
        let threads = KernelThreads(bench.threads)
        let (B, H, D, P) = (Self.B, Self.H, Self.D, comm.size)
        for length in n {
            if let problem = SequenceSharding.problem(length: length, ranks: P) {
                throw ValidationError("--n \(length) with \(P) ranks: \(problem.replacingOccurrences(of: "data.seq_len", with: "N").replacingOccurrences(of: "parallel.sequence", with: "ranks"))")
            }
            let positions = SequenceSharding.positions(length: length, ranks: P, rank: comm.rank)
            let local = positions.count, size = B * local * H * D
            // Each token's rows come from a stream seeded by its global position, so every rank
            // holds exactly its share of one sequence (and nothing more).
            let q = FloatBuffer(count: size), k = FloatBuffer(count: size), v = FloatBuffer(count: size), o = FloatBuffer(count: size)
            for (t, position) in positions.enumerated() {
                var rng = RNG(seed: 5 + UInt64(position))
                for j in 0..<(H * D) {
                    q[t * H * D + j] = Float(rng.nextNormal()); k[t * H * D + j] = Float(rng.nextNormal()); v[t * H * D + j] = Float(rng.nextNormal())
                }
            }
            let dO = FloatBuffer(count: size), dq = FloatBuffer(count: size), dk = FloatBuffer(count: size), dv = FloatBuffer(count: size)
            for i in 0..<size { dO[i] = 1 }
            // Touch the outputs now (large buffers are mapped lazily), so the growth measured
            // below is the kernel's own memory, not the first write of its outputs.
            for buffer in [o, dq, dk, dv] { buffer.zero() }
            for kernel in kernels {
                let call: (_ backward: Bool) throws -> Void
                if kernel == "ring" {
                    let ring = try RingAttention(batch: B, length: local, heads: H, kvHeads: H, headDim: D, positions: positions, comm: comm)
                    let logsumexp = FloatBuffer(count: B * H * local)
                    call = { backward in
                        try ring.forward(q: q.pointer, k: k.pointer, v: v.pointer, o: o.pointer, logsumexp: logsumexp.pointer, threads: threads)
                        if backward {
                            try ring.backward(q: q.pointer, k: k.pointer, v: v.pointer, o: o.pointer, logsumexp: logsumexp.pointer,
                                              dO: dO.pointer, dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, threads: threads)
                        }
                    }
                } else {
                    guard H % P == 0 else { throw ValidationError("--impl ulysses: \(H) heads do not split over \(P) ranks") }
                    let ulysses = try UlyssesAttention(batch: B, length: local, heads: H, kvHeads: H, headDim: D, positions: positions, comm: comm)
                    call = { backward in
                        try ulysses.forward(q: q.pointer, k: k.pointer, v: v.pointer, o: o.pointer, threads: threads)
                        if backward { try ulysses.backward(dO: dO.pointer, dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, threads: threads) }
                    }
                }
                for m in mode {
                    let backward = m == "fwdbwd"
                    // One call first: the transport's one-time buffers (MPI's shared-memory
                    // segments are mapped on first use) are not memory a call adds.
                    try call(backward)
                    ResidentMemory.releaseFreeMemory()
                    try comm.barrier()
                    var failure: Error?
                    let growth = ResidentMemory.peakGrowth { () -> AnyObject? in
                        do { try call(backward) } catch { failure = error }
                        return nil
                    }
                    if let failure { throw failure }
                    let largest = try comm.allReduce(Float(growth ?? 0), op: .max)
                    let seconds = try BenchReport.time(runs: bench.runs, warmup: bench.warmup, comm: comm) { try call(backward) }
                    try BenchReport.emit("attention", impl: kernel, threads: bench.threads, comm: comm,
                                         shape: ["B": B, "H": H, "D": D, "N": length, "causal": true, "mode": m, "tokens_per_rank": local],
                                         unit: "ms", values: seconds.map { $0 * 1000 },
                                         extra: growth == nil ? [:] : ["peak_growth_mib": BenchReport.round4(Double(largest) / Double(1 << 20))])
                }
            }
        }
    }
}
