import ArgumentParser
import Collectives
import Foundation
import Kernels
import Models
import TensorCore

/// `tessera bench decode`: one query token against a KV cache of `kv_len` positions, H = 8
/// heads of D = 64 (docs/BENCHMARKS.md). Under mpirun or `tessera launch` the cache is sharded
/// over the ranks as `tessera generate` shards it, and a step includes the exchange of partials.
/// With `--model teacher student` it times whole-model decode steps instead (DecodeBench+Model.swift):
/// the teacher's against its KV cache, the Mamba-2 student's through its recurrent state.
struct DecodeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Decode attention against a KV cache (µs per step; gbps: K and V bytes read / time), or whole-model decode steps of a teacher and its Mamba-2 student (--model).")
    @OptionGroup var bench: BenchOptions
    @OptionGroup var world: WorldOptions
    @Option(name: .customLong("kv-len"), parsing: .upToNextOption,
            help: "Cached positions (context length). Default: 8192 32768 131072; with --model 8192 16384 32768 65536 131072.")
    var kvLen: [Int] = []
    @Option(parsing: .upToNextOption, help: "Implementations: lean (LeanAttention), naive (plain scalar loops), memread (a SIMD sum of the same bytes: the bandwidth limit). Default: all three.")
    var impl: [String] = []
    @Option(parsing: .upToNextOption,
            help: "Whole-model decode steps instead of the attention kernels: teacher (the --config model, KV-cache attention), student (the same model with Mamba-2 mixers, recurrent state). With both, the crossover context length is printed.")
    var model: [String] = []
    @Option(help: "With --model: the teacher's run config (its model section is used).")
    var config = "configs/bench-dense.yaml"
    @Option(name: .customLong("attention-layers"), help: "With --model student: layers (from 0, e.g. 1 or 0,2) that keep attention (a hybrid; empty: all Mamba-2).")
    var attentionLayers = ""

    static let (heads, headDim) = (8, 64)

    func validate() throws {
        if !kvLen.isEmpty { try requireAtLeast(1, kvLen, option: "kv-len") }
        if let bad = impl.first(where: { !["lean", "naive", "memread"].contains($0) }) {
            throw ValidationError("--impl \(bad): choose lean, naive or memread")
        }
        if let bad = model.first(where: { !["teacher", "student"].contains($0) }) {
            throw ValidationError("--model \(bad): choose teacher, student or both")
        }
        if !model.isEmpty, !impl.isEmpty {
            throw ValidationError("--impl times attention kernels and --model whole-model decode steps: pass one of them")
        }
    }

    func run() throws {
        let comm = try world.makeWorld(defaultTimeout: 120)
        let threads = KernelThreads(bench.threads)
        if !model.isEmpty { return try runModels(comm: comm, threads: threads) }
        let kvLen = self.kvLen.isEmpty ? [8192, 32768, 131072] : self.kvLen
        let impl = self.impl.isEmpty ? ["lean", "naive", "memread"] : self.impl
        let (H, D) = (Self.heads, Self.headDim)
        let plan = try KVShardPlan(rank: comm.rank, ranks: comm.size)
        let sharing = comm.size > 1 ? comm : nil
        for length in kvLen {
            let local = plan.localLength(of: comm.rank, length: length)
            let cache = KVCache(kvHeads: H, headDim: D, initialCapacity: max(local, 1))
            var rng = RNG(seed: UInt64(1 + comm.rank))
            var key = [Float](repeating: 0, count: H * D), value = key
            for _ in 0..<local {
                for i in 0..<(H * D) { key[i] = Float(rng.nextUniform() * 2 - 1); value[i] = Float(rng.nextUniform() * 2 - 1) }
                cache.append(key: key, value: value)
            }
            var q = [Float](repeating: 0, count: H * D)
            var queryRNG = RNG(seed: 7)
            for i in q.indices { q[i] = Float(queryRNG.nextNormal()) }
            let attention = ShardedDecodeAttention(heads: H, kvHeads: H, headDim: D, plan: plan)
            let o = FloatBuffer(count: H * D)
            let bytes = Double(2 * length * H * D * MemoryLayout<Float>.size)
            let bodies: [() throws -> Void] = impl.map { name in
                switch name {
                case "lean":
                    return { try attention.attend(q: q, cache: cache, length: length, communicator: sharing, o: o.pointer, threads: threads) }
                case "naive":
                    return { try Self.naive(q: q, cache: cache, communicator: sharing, o: o.pointer) }
                default:
                    return { try Self.memread(cache, threads: threads, communicator: sharing) }
                }
            }
            // The implementations' runs alternate: their ratios compare the same moments of the machine.
            let timings = try BenchReport.time(runs: bench.runs, warmup: bench.warmup, comm: comm, interleaving: bodies)
            for (name, seconds) in zip(impl, timings) {
                let median = seconds.sorted()[seconds.count / 2]
                try BenchReport.emit("decode", impl: name, threads: bench.threads, comm: comm,
                                     shape: ["kv_len": length, "H": H, "D": D], unit: "µs", values: seconds.map { $0 * 1e6 },
                                     extra: ["gbps": BenchReport.round4(bytes / median / 1e9), "local_kv_len": local,
                                             "block": plan.blockSize, "lanes": plan.lanes])
            }
        }
    }

    /// Plain scalar loops, one head at a time: scores, softmax, weighted sum of V. With several
    /// ranks each merges its (o, lse) with the others' in rank order (one allGather).
    static func naive(q: [Float], cache: KVCache, communicator: Communicator?, o: UnsafeMutablePointer<Float>) throws {
        let (H, D, L) = (heads, headDim, cache.length)
        let scale = 1 / Float(D).squareRoot()
        var records = [Float](repeating: 0, count: H * (D + 1))
        var scores = [Float](repeating: 0, count: L)
        for h in 0..<H {
            let k = cache.keyPointer + h * cache.capacity * D, v = cache.valuePointer + h * cache.capacity * D
            var maximum = -Float.infinity
            for j in 0..<L {
                var s: Float = 0
                for d in 0..<D { s += q[h * D + d] * k[j * D + d] }
                scores[j] = s * scale
                maximum = max(maximum, scores[j])
            }
            var sum: Float = 0
            for j in 0..<L { scores[j] = exp(scores[j] - maximum); sum += scores[j] }
            for d in 0..<D {
                var acc: Float = 0
                for j in 0..<L { acc += scores[j] * v[j * D + d] }
                records[h * (D + 1) + d] = L > 0 ? acc / sum : 0
            }
            records[h * (D + 1) + D] = L > 0 ? maximum + log(sum) : -.infinity
        }
        if let communicator {
            let all = try communicator.allGather(records)
            records = Array(all[0..<(H * (D + 1))])
            for r in 1..<communicator.size {
                for h in 0..<H {
                    records.withUnsafeMutableBufferPointer { target in
                        all.withUnsafeBufferPointer { source in
                            LeanAttention.merge(target.baseAddress! + h * (D + 1), source.baseAddress! + (r * H + h) * (D + 1), headDim: D)
                        }
                    }
                }
            }
        }
        for h in 0..<H { for d in 0..<D { o[h * D + d] = records[h * (D + 1) + d] } }
    }

    nonisolated(unsafe) static var sink: Float = 0

    /// Reads every cached K and V float once (split over the threads), into four independent
    /// 8-lane sums: one sum waits on the latency of each addition and measured 10-35% below
    /// what the memory gives (a compute limit, not a bandwidth one); four keep up with memory and
    /// with AVX-512 loads. With several ranks, one allReduce of the sums so a step lasts as long
    /// as the slowest rank.
    static func memread(_ cache: KVCache, threads: KernelThreads, communicator: Communicator?) throws {
        let (H, D, L, capacity) = (heads, headDim, cache.length, cache.capacity)
        let parts = max(1, min(threads.count, H))
        var sums = [Float](repeating: 0, count: parts)
        sums.withUnsafeMutableBufferPointer { out in
            let out = out.baseAddress!
            DispatchQueue.concurrentPerform(iterations: parts) { part in
                var (a0, a1, a2, a3) = (VectorMath.Lanes(), VectorMath.Lanes(), VectorMath.Lanes(), VectorMath.Lanes())
                for h in (part * H / parts)..<((part + 1) * H / parts) {
                    for base in [cache.keyPointer, cache.valuePointer] {
                        let p = base + h * capacity * D
                        var i = 0
                        while i + 32 <= L * D {
                            a0 += VectorMath.load(p + i); a1 += VectorMath.load(p + i + 8)
                            a2 += VectorMath.load(p + i + 16); a3 += VectorMath.load(p + i + 24)
                            i += 32
                        }
                        while i + 8 <= L * D { a0 += VectorMath.load(p + i); i += 8 }
                    }
                }
                out[part] = ((a0 + a1) + (a2 + a3)).sum()
            }
        }
        var total = sums.reduce(0, +)
        if let communicator { total = try communicator.allReduce(total, op: .sum) }
        sink += total
    }
}
