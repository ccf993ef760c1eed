import ArgumentParser
import Collectives
import CollectivesMPI
import CollectivesTCP
import Foundation
import Kernels
import TensorCore
import Training

/// `tessera bench`: speed and memory as JSON lines (docs/BENCHMARKS.md). Rank 0 prints; logs go to stderr.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure speed and memory; prints one JSON object per measurement.",
        subcommands: [GemmBench.self, TrainBench.self, CommBench.self, AttentionBench.self, DecodeBench.self, CheckpointBench.self])
}

/// Options every bench shares.
struct BenchOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: "Kernel threads per rank.")
    var threads = 1

    @Option(parsing: .unconditional, help: "Timed repetitions after the warm-up (at least 1).")
    var runs = 5

    @Option(parsing: .unconditional, help: "Untimed warm-up repetitions.")
    var warmup = 1

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads \(threads) must be at least 1") }
        guard runs >= 1 else { throw ValidationError("--runs \(runs) must be at least 1") }
        guard warmup >= 0 else { throw ValidationError("--warmup \(warmup) must not be negative") }
    }
}

/// Rejects a list option holding a value below `minimum`, naming the option.
func requireAtLeast(_ minimum: Int, _ values: [Int], option: String) throws {
    if let bad = values.first(where: { $0 < minimum }) { throw ValidationError("--\(option) \(bad) must be at least \(minimum)") }
    if values.isEmpty { throw ValidationError("--\(option) needs at least one value") }
}

enum BenchReport {
    /// Peak resident memory of this process in MiB.
    static var peakRSSMiB: Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) / 1024
    }

    /// Shortest warm-up: the first tenths of a second of a fresh process run slow (page tables,
    /// caches, the scheduler spreading ranks over cores), longer than a few fast repetitions.
    static let minimumWarmupSeconds = 0.5

    /// Times `body` `runs` times after at least `warmup` untimed calls lasting at least
    /// `minimumWarmupSeconds` together; seconds per call. With `comm`, rank 0's clock decides
    /// when the warm-up ends, so every rank makes the same number of (collective) calls.
    static func time(runs: Int, warmup: Int, comm: Communicator = SingleProcessCommunicator(), _ body: () throws -> Void) throws -> [Double] {
        let start = DispatchTime.now().uptimeNanoseconds
        var done = 0
        while true {
            var more: [Float] = [done < warmup || Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 < minimumWarmupSeconds ? 1 : 0]
            try comm.broadcast(&more, root: 0)
            if more[0] == 0 { break }
            try body()
            done += 1
        }
        return try (0..<runs).map { _ in
            let start = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
    }

    /// `time` for several bodies together: each warms up as `time` does, then their timed runs
    /// alternate (run i of every body before run i + 1 of any), so a drift of the machine (a
    /// neighbour's memory traffic on a shared host) falls on each of them alike and their ratio
    /// compares like with like. Seconds per call, per body.
    static func time(runs: Int, warmup: Int, comm: Communicator = SingleProcessCommunicator(),
                     interleaving bodies: [() throws -> Void]) throws -> [[Double]] {
        for body in bodies { _ = try time(runs: 0, warmup: warmup, comm: comm, body) }
        var seconds = bodies.map { _ in [Double]() }
        for _ in 0..<runs {
            for (i, body) in bodies.enumerated() {
                let start = DispatchTime.now().uptimeNanoseconds
                try body()
                seconds[i].append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
        }
        return seconds
    }

    /// One JSON line with the docs/BENCHMARKS.md keys; `values` are already in `unit`. Collective over `comm`
    /// (for the largest rank's memory); rank 0 prints.
    static func emit(_ bench: String, impl: String, threads: Int, comm: Communicator, shape: [String: Any],
                     unit: String, values: [Double], extra: [String: Any] = [:]) throws {
        let rss = try comm.allReduce(Float(peakRSSMiB), op: .max)
        guard comm.rank == 0 else { return }
        let sorted = values.sorted()
        var object: [String: Any] = ["bench": bench, "impl": impl, "threads": threads, "ranks": comm.size, "unit": unit,
                                     "min": round4(sorted.first ?? 0), "median": round4(sorted.isEmpty ? 0 : sorted[sorted.count / 2]),
                                     "max": round4(sorted.last ?? 0), "runs": values.count, "peak_rss_mib": round4(Double(rss))]
        object.merge(machine) { $1 }
        object.merge(shape) { $1 }
        object.merge(extra) { $1 }
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        print(String(decoding: data, as: UTF8.self))
        fflush(stdout)
    }

    /// What a figure cannot be compared without: the BLAS kernel family, Tessera's GEMM kernel and the CPU.
    static var machine: [String: Any] { ["blas_core": BLASLibrary.coreName, "cpu": CPUInfo.current.modelName, "gemm_isa": TesseraGemm.isa.rawValue] }

    static func round4(_ x: Double) -> Double { (x * 10_000).rounded() / 10_000 }

    static func log(_ text: String) { try? FileHandle.standardError.write(contentsOf: Data((text + "\n").utf8)) }
}

struct GemmBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "gemm", abstract: "GEMM GFLOP/s (Float32, or bf16 with --dtype): n×n×n squares and M×N×K shapes, each implementation in turn.")
    @OptionGroup var bench: BenchOptions
    @OptionGroup var world: WorldOptions
    @Option(parsing: .upToNextOption, help: "Matrix sizes (n×n×n, no transposes).")
    var n: [Int] = [1024, 2048]
    @Option(parsing: .unconditional, help: "fp32, or bf16 (Float32 inputs rounded to bf16, Float32 accumulation: train.precision bf16's products, always Tessera's bf16 kernel).")
    var dtype: ComputePrecision = .fp32
    @Option(parsing: .upToNextOption, help: "Shapes MxNxK[:TT] (T/N per operand, e.g. 2048x768x256:NT for a linear forward), measured after --n.")
    var shape: [GemmShape] = []
    @Option(parsing: .upToNextOption, help: "Implementations, measured one after the other on every shape: tessera, openblas.")
    var impl: [GemmImplementation] = [.tessera]
    @Option(parsing: .unconditional, help: "C = A·B + beta·C: 0 overwrites C, 1 adds into it (training's weight gradients dW += dyᵀx and summed input gradients).")
    var beta: Float = 0
    @Flag(help: "C in memory, not in cache, at every call: each call takes the next C of a ring of \(GemmBench.coldRingMiB) MiB, written once before timing (A and B stay warm), as a weight gradient is when the backward pass adds into it.")
    var cold = false

    func validate() throws {
        if shape.isEmpty { try requireAtLeast(1, n, option: "n") }
        if impl.isEmpty { throw ValidationError("--impl needs at least one of tessera, openblas") }
        guard beta.isFinite else { throw ValidationError("--beta \(beta) must be a finite number (0 overwrites C, 1 adds into it)") }
    }

    /// Bytes of the ring of C buffers `--cold` cycles through: more than the last-level cache a
    /// core reaches on the CPUs this runs on (32 MiB per Zen 4/5 CCD, up to 96 MiB with V-Cache),
    /// so the C of a call was last touched a ring's worth of writes earlier and has left every cache.
    static let coldRingMiB = 256

    /// The C of each call: one buffer (warm), or with `cold` consecutive slots of a ring holding at
    /// least `coldRingMiB` (at least 2 slots), every slot written once (pages mapped, values set).
    static func outputs(count: Int, cold: Bool) -> (buffer: FloatBuffer, slots: Int) {
        let slots = cold ? max(2, (coldRingMiB << 20) / (count * MemoryLayout<Float>.stride) + 1) : 1
        let buffer = FloatBuffer(count: slots * count)
        for i in 0..<(slots * count) { buffer[i] = Float(i % 7) * 0.25 }
        return (buffer, slots)
    }

    func run() throws {
        let comm = try world.makeWorld()
        let threads = KernelThreads(bench.threads)
        let shapes = n.map { GemmShape(m: $0, n: $0, k: $0, transposeA: false, transposeB: false) } + shape
        for product in shapes {
            let (m, n, k) = (product.m, product.n, product.k)
            let a = FloatBuffer(count: m * k), b = FloatBuffer(count: k * n)
            var rng = RNG(seed: 1)
            for i in 0..<(m * k) { a[i] = Float(rng.nextNormal()) }
            for i in 0..<(k * n) { b[i] = Float(rng.nextNormal()) }
            let (c, slots) = Self.outputs(count: m * n, cold: cold)
            var slot = 0
            for implementation in dtype == .bf16 ? [.tessera] : impl {
                try Matmul.select(implementation)
                let seconds = try BenchReport.time(runs: bench.runs, warmup: bench.warmup) {
                    slot = (slot + 1) % slots
                    Matmul.gemm(transposeA: product.transposeA, transposeB: product.transposeB, m: m, n: n, k: k,
                                a: a.pointer, lda: product.transposeA ? m : k, b: b.pointer, ldb: product.transposeB ? k : n,
                                beta: beta, c: c.pointer + slot * m * n, ldc: n, threads: threads, precision: dtype)
                }
                let flops = 2 * Double(m) * Double(n) * Double(k)
                let name = dtype == .bf16 ? "tessera-bf16-\(BF16Kernel.best)"
                    : implementation == .tessera ? "tessera-\(TesseraGemm.isa.rawValue)" : "openblas-sgemm"
                let dimensions: [String: Any] = m == n && n == k && !product.transposeA && !product.transposeB
                    ? ["n": n, "dtype": dtype.rawValue] : ["m": m, "n": n, "k": k, "transpose": product.transposes, "dtype": dtype.rawValue]
                try BenchReport.emit("gemm", impl: name, threads: bench.threads, comm: comm, shape: dimensions,
                                     unit: "GFLOP/s", values: seconds.map { flops / $0 / 1e9 },
                                     extra: ["beta": Double(beta), "cold": cold])
            }
        }
    }

    /// Measured single-call GFLOP/s of an n×n×n GEMM on this machine with the current threads.
    /// `implementation`: the process's unless given (`selftest blas` measures OpenBLAS's).
    static func peak(n: Int = 1024, threads: KernelThreads, implementation: GemmImplementation = Matmul.implementation) throws -> Double {
        let a = FloatBuffer(count: n * n), b = FloatBuffer(count: n * n), c = FloatBuffer(count: n * n)
        for i in 0..<(n * n) { a[i] = 0.001 * Float(i % 13); b[i] = 0.002 * Float(i % 7) }
        let seconds = try BenchReport.time(runs: 3, warmup: 1) {
            Matmul.gemm(transposeA: false, transposeB: false, m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, c: c.pointer, ldc: n, threads: threads,
                        implementation: implementation)
        }
        return 2 * pow(Double(n), 3) / seconds.min()! / 1e9
    }
}

struct TrainBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "train", abstract: "Training throughput of a config (tokens/s of the global batch) and MFU.")
    @OptionGroup var options: ConfigOptions
    @OptionGroup var world: WorldOptions
    @Option(parsing: .unconditional, help: "Kernel threads per rank.")
    var threads = 1
    @Option(parsing: .unconditional, help: "Timed steps (BENCH conventions: at least 20).")
    var steps = 20
    @Option(parsing: .unconditional, help: "Untimed warm-up steps.")
    var warmup = 5

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads \(threads) must be at least 1") }
        guard steps >= 1 else { throw ValidationError("--steps \(steps) must be at least 1 (20 or more for a report)") }
        guard warmup >= 0 else { throw ValidationError("--warmup \(warmup) must not be negative") }
    }

    /// The bench model's config: --config, else configs/bench-dense.yaml in the current
    /// directory or in the checkout this executable was built in.
    /// Paths in a config found in the checkout are relative to the checkout.
    static func defaultConfigFile() throws -> (file: String, base: String) {
        let name = "configs/bench-dense.yaml"
        if FileManager.default.fileExists(atPath: name) { return (name, FileManager.default.currentDirectoryPath) }
        // The executable lives in CHECKOUT/.build/<triple>/release (or .build/release).
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<4 {
            directory = directory.deletingLastPathComponent()
            let candidate = directory.appendingPathComponent(name).path
            if FileManager.default.fileExists(atPath: candidate) { return (candidate, directory.path) }
        }
        throw ValidationError("no --config given and \(name) is neither in the current directory nor in the checkout this tessera was built in; pass --config FILE (the bench models are in the repository's configs/)")
    }

    func run() throws {
        let fallback = options.config == nil && !options.helpConfig ? try Self.defaultConfigFile() : nil
        var config = try options.load(defaultFile: fallback?.file)
        if let fallback { config = config.resolvingPaths(against: fallback.base) }
        config.train.threads = threads
        config.train.steps = warmup + steps
        config = try config.validated()
        try Matmul.select(config.gemmImplementation)
        let comm = try world.makeWorld(defaultTimeout: config.parallel.timeoutSeconds, seal: config.parallel.tcpSeal)
        let trainer = try Trainer(config: config, world: comm)
        for _ in 0..<warmup { try trainer.trainStep() }
        var seconds: [Double] = []
        let exchangeBefore = trainer.model.expertExchangeSeconds
        for _ in 0..<max(steps, 1) {
            try comm.barrier()
            let start = DispatchTime.now().uptimeNanoseconds
            try trainer.trainStep()
            seconds.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        let tokens = Double(trainer.tokensPerStep)
        let rates = seconds.map { tokens / $0 }
        let model = trainer.model
        let length = config.data.seqLen
        // Training FLOPs per token: 3 × forward (forward + backward's two products).
        let flopsPerToken = 3 * (model.matmulFlopsPerToken + model.attentionFlopsPerToken(length: length))
        let peakPerRank = try GemmBench.peak(threads: trainer.model.threads) // this rank's GEMM peak with the same threads
        let peak = peakPerRank * Double(comm.size)
        let median = rates.sorted()[rates.count / 2]
        // MFU is over this CPU's GEMM peak, which a weaker OpenBLAS core than the best does not show.
        var mfu: Any = BenchReport.round4(median * flopsPerToken / (peak * 1e9))
        if Matmul.implementation == .openblas, let best = KernelSelection.weakerThanBest {
            mfu = NSNull()
            if comm.rank == 0 {
                BenchReport.log("tessera: no MFU: the \(BLASLibrary.coreName) kernels run, whose peak is not this CPU's; run with OPENBLAS_CORETYPE=\(best) for both")
            }
        }
        // Share of the timed steps spent in the expert all-to-all (the slowest rank's share).
        let exchangeShare = try comm.allReduce(Float((trainer.model.expertExchangeSeconds - exchangeBefore) / seconds.reduce(0, +)), op: .max)
        // Parameters, gradients and optimizer state held by design (the largest rank's).
        let stateMiB = try comm.allReduce(Float(Double(trainer.stateBytes) / 1_048_576), op: .max)
        try BenchReport.emit("train", impl: "tessera", threads: threads, comm: comm,
                             shape: ["model": config.moe.experts > 0 ? "moe" : "dense", "data": trainer.grid.dataSize,
                                     "sequence": trainer.grid.sequenceSize, "expert": trainer.grid.size(of: .expert),
                                     "config": options.config ?? "configs/bench-dense.yaml", "overlap": config.parallel.overlap && config.reduction == .allreduce,
                                     "gemm": Matmul.implementationDescription,
                                     "zero": config.parallel.zero, "reduction": config.parallel.reduction,
                                     "micro_batch": trainer.microBatch],
                             unit: "tokens/s", values: rates,
                             extra: ["parameters": model.parameterCount, "tokens_per_step": trainer.tokensPerStep,
                                     "gemm_peak_gflops": BenchReport.round4(peak), "precision": config.train.precision, "mfu": mfu, "state_mib": BenchReport.round4(Double(stateMiB))]
                                 .merging(trainer.grid.size(of: .expert) > 1 ? ["all_to_all_share": BenchReport.round4(Double(exchangeShare))] : [:]) { a, _ in a })
    }
}

struct CommBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "comm", abstract: "Collective bandwidth of this job's backend (GB/s per rank).")
    @OptionGroup var bench: BenchOptions
    @OptionGroup var world: WorldOptions
    @Option(parsing: .upToNextOption, help: "Operations: allreduce, allgather, reduce_scatter, alltoall.")
    var op: [String] = ["allreduce", "allgather", "reduce_scatter", "alltoall"]
    @Option(parsing: .upToNextOption, help: "MiB of Float32 per rank.")
    var mib: [Int] = [1, 16, 64]

    func validate() throws { try requireAtLeast(1, mib, option: "mib") }

    func run() throws {
        let comm = try world.makeWorld(defaultTimeout: 120)
        guard comm.size > 1 else {
            throw CommandLineError.benchNeedsSeveralRanks(bench: "comm")
        }
        for name in op {
            guard ["allreduce", "allgather", "reduce_scatter", "alltoall"].contains(name) else {
                throw ValidationError("unknown --op \(name); choose allreduce, allgather, reduce_scatter or alltoall")
            }
            for size in mib {
                let bytes = size << 20, floats = bytes / 4
                let count = floats / comm.size * comm.size   // divisible blocks for scatter/alltoall
                let input = FloatBuffer(count: count), output = FloatBuffer(count: name == "allgather" ? count * comm.size : count)
                let body: () throws -> Void
                switch name {
                case "allreduce": body = { try comm.allReduce(input.buffer, op: .sum) }
                case "allgather": body = {
                    try comm.allGather(UnsafeRawBufferPointer(input.buffer), counts: [Int](repeating: count * 4, count: comm.size),
                                       into: UnsafeMutableRawBufferPointer(output.buffer)) }
                case "reduce_scatter": body = {
                    try comm.reduceScatter(UnsafeBufferPointer(input.buffer),
                                           into: UnsafeMutableBufferPointer(start: output.pointer, count: count / comm.size), op: .sum) }
                default: body = {
                    let block = [Int](repeating: count / comm.size * 4, count: comm.size)
                    try comm.allToAll(UnsafeRawBufferPointer(input.buffer), sendCounts: block,
                                      into: UnsafeMutableRawBufferPointer(output.buffer), receiveCounts: block) }
                }
                let seconds = try BenchReport.time(runs: bench.runs, warmup: bench.warmup, comm: comm) { try comm.barrier(); try body() }
                try BenchReport.emit("comm", impl: comm.backendName, threads: bench.threads, comm: comm,
                                     shape: ["op": name, "bytes": bytes], unit: "GB/s", values: seconds.map { Double(bytes) / $0 / 1e9 },
                                     extra: payloadPath(comm))
                if name == "allreduce", let mpi = comm as? MPICommunicator {
                    let bare = try BenchReport.time(runs: bench.runs, warmup: bench.warmup, comm: comm) { try comm.barrier(); mpi.blockingAllReduceSum(input.buffer) }
                    try BenchReport.emit("comm", impl: "mpi-bare-allreduce", threads: bench.threads, comm: comm,
                                         shape: ["op": name, "bytes": bytes], unit: "GB/s", values: bare.map { Double(bytes) / $0 / 1e9 })
                }
            }
        }
    }

    /// For the socket backend, how rank 0's payloads move between ranks: `memory` (every peer is
    /// on this host and read directly), `socket` (none is), or `mixed`; and `tcp_seal`, how many
    /// of its connections are sealed (`parallel.tcp_seal`): `all`, `none` or `some`.
    func payloadPath(_ comm: Communicator) -> [String: Any] {
        guard let tcp = comm as? TCPCommunicator, comm.size > 1 else { return [:] }
        let peers = tcp.sameHostPeers, sealed = tcp.sealedPeers
        return ["payload_path": peers == comm.size - 1 ? "memory" : peers == 0 ? "socket" : "mixed",
                "tcp_seal": sealed == comm.size - 1 ? "all" : sealed == 0 ? "none" : "some"]
    }
}

extension ComputePrecision: ExpressibleByArgument {}

/// One product of `bench gemm --shape`: "MxNxK" or "MxNxK:TT" (T transposed, N not, for A then B).
struct GemmShape: ExpressibleByArgument {
    let m: Int, n: Int, k: Int, transposeA: Bool, transposeB: Bool

    init(m: Int, n: Int, k: Int, transposeA: Bool, transposeB: Bool) {
        (self.m, self.n, self.k, self.transposeA, self.transposeB) = (m, n, k, transposeA, transposeB)
    }

    init?(argument: String) {
        let parts = argument.uppercased().split(separator: ":", omittingEmptySubsequences: false)
        let sizes = parts[0].split(separator: "X").compactMap { Int($0) }
        guard parts.count <= 2, sizes.count == 3, sizes.allSatisfy({ $0 >= 1 && $0 <= 1 << 16 }) else { return nil }
        let flags = parts.count == 2 ? Array(parts[1]) : ["N", "N"]
        guard flags.count == 2, flags.allSatisfy({ $0 == "N" || $0 == "T" }) else { return nil }
        self.init(m: sizes[0], n: sizes[1], k: sizes[2], transposeA: flags[0] == "T", transposeB: flags[1] == "T")
    }

    var transposes: String { (transposeA ? "T" : "N") + (transposeB ? "T" : "N") }
    static var defaultValueDescription: String { "MxNxK[:TT]" }
}

extension GemmImplementation: ExpressibleByArgument {}
