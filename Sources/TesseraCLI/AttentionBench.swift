import ArgumentParser
import Collectives
import Foundation
import Kernels
import TensorCore

/// `tessera bench attention`: one attention call, forward or forward + backward, by kernel
/// (docs/BENCHMARKS.md): B = 1, H = 8, D = 64, over the sequence lengths N.
struct AttentionBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention",
        abstract: "Attention forward / forward+backward (ms) and the memory one call adds (peak_growth_mib).")
    @OptionGroup var bench: BenchOptions
    @Option(parsing: .upToNextOption, help: "Sequence lengths.")
    var n: [Int] = [512, 1024, 2048, 4096]
    @Option(parsing: .upToNextOption, help: "fwd, fwdbwd.")
    var mode: [String] = ["fwd", "fwdbwd"]
    @Option(parsing: .upToNextOption, help: "Kernels: flash (tiled, memory linear in N), naive (materialised B·H·N² probabilities).")
    var impl: [String] = ["flash", "naive"]
    @Option(help: "Causal masking (the naive kernel is causal only).")
    var causal = true

    static let (B, H, D) = (1, 8, 64)
    /// The naive kernel's probabilities are refused beyond this (N = 8192 needs 2 GiB).
    static let naiveLimitBytes = 4 << 30

    func validate() throws {
        try requireAtLeast(1, n, option: "n")
        if let bad = mode.first(where: { !["fwd", "fwdbwd"].contains($0) }) { throw ValidationError("--mode \(bad): choose fwd or fwdbwd") }
        if let bad = impl.first(where: { !["flash", "naive"].contains($0) }) { throw ValidationError("--impl \(bad): choose flash or naive") }
        if impl.contains("naive") {
            if !causal { throw ValidationError("--impl naive is causal only; use --impl flash with --causal false") }
            if let long = n.first(where: { Self.B * Self.H * $0 * $0 * 4 > Self.naiveLimitBytes }) {
                let gib = Double(Self.B * Self.H * long * long * 4) / Double(1 << 30)
                throw ValidationError("--impl naive at N=\(long) needs \(gib) GiB for its probabilities (B·H·N² floats); measure N above 8192 with --impl flash")
            }
        }
    }

    func run() throws {
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
                                                   causal: causal)
                    savedCount = attention.logsumexpCount
                    call = { l, backward in
                        attention.forward(q: q.pointer, k: k.pointer, v: v.pointer, o: o.pointer, logsumexp: l, threads: threads)
                        if backward {
                            attention.backward(q: q.pointer, k: k.pointer, v: v.pointer, o: o.pointer, logsumexp: l, dO: dO.pointer,
                                               dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, threads: threads)
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
                                         shape: ["B": B, "H": H, "D": D, "N": length, "causal": causal, "mode": m],
                                         unit: "ms", values: seconds.map { $0 * 1000 },
                                         extra: growth.map { ["peak_growth_mib": BenchReport.round4(Double($0) / Double(1 << 20))] } ?? [:])
                }
            }
        }
    }
}
