import ArgumentParser
import Collectives
import Foundation
import Kernels
import Training

/// `tessera selftest comm`: the communicator conformance suite on the backend this process was
/// started with (like nccl-tests: run it on a new cluster before training).
struct SelfTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check this machine and this build: the communication backend, the BLAS kernels, the fast kernels against their naive twins, the pinned losses.",
        discussion: """
            comm: the communicator conformance suite on this job's backend (run it on a new cluster before training).
            blas: the BLAS library, the kernel family (core) it runs and why, the CPU's vector features, and the measured \
            GEMM peak, with a warning when the peak is far below what the CPU's vector width suggests.
            kernels: every fast kernel (matmul, rmsnorm, rope, swiglu, cross-entropy, flash attention forward and backward, \
            the materialised attention, lean decode attention, the SSD scan, the causal convolution, AdamW) against its naive \
            Float64 twin on awkward sizes, in this binary (the unit tests run a debug build), over --threads kernel threads.
            pinned: ten steps of a tiny model with the naive and the flash attention kernel, their losses and gradient \
            norms against the pinned values (relative 1e-6), in this binary.
            kernels and pinned print one line per comparison and "N passed, M failed", and exit 1 when one failed.
            """)

    @Argument(help: "What to test: comm, blas, kernels or pinned.")
    var what: Target = .comm

    enum Target: String, ExpressibleByArgument, CaseIterable { case comm, blas, kernels, pinned }

    @Option(parsing: .unconditional, help: "kernels: kernel threads the kernels split their work over (at least 1).")
    var threads = 1

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads \(threads) must be at least 1") }
    }

    @Flag(help: "blas: print only the name of the core this process runs (for scripts), without measuring.")
    var coreName = false

    @OptionGroup var world: WorldOptions

    @Option(help: "Length of the largest buffer, in floats.")
    var large = 1_000_003

    @Option(help: "For failure tests: this rank kills itself (SIGKILL) in the middle of an allreduce.")
    var dieRank: Int?

    @Option(help: "For failure tests: this rank stops answering (sleeps) in the middle of an allreduce.")
    var hangRank: Int?

    @Option(help: "For failure tests: the collective --die-rank and --hang-rank stop in: allreduce, or alltoall (the MoE token exchange).")
    var during: StoppedCollective = .allreduce

    enum StoppedCollective: String, ExpressibleByArgument, CaseIterable { case allreduce, alltoall }

    func run() throws {
        switch what {
        case .blas:
            if coreName { print(BLASLibrary.coreName); return }
            return try BLASReport.run(threads: 1)
        case .kernels: return try report(KernelSelfTest.run(threads: KernelThreads(threads)))
        case .pinned: return try report(PinnedRun.check())
        case .comm: break
        }
        let comm = try world.makeWorld(defaultTimeout: 60)
        if dieRank != nil || hangRank != nil {
            var data = [Float](repeating: 1, count: 1 << 20)
            try comm.allReduce(&data, op: .sum)
            if comm.rank == dieRank { kill(getpid(), SIGKILL) }
            if comm.rank == hangRank { sleep(3600) }
            // The survivors must throw here, naming dieRank (or hangRank) and the operation.
            switch during {
            case .allreduce: try comm.allReduce(&data, op: .sum)
            case .alltoall:
                let block = data.count / comm.size * MemoryLayout<Float>.size
                let counts = [Int](repeating: block, count: comm.size)
                var output = [Float](repeating: 0, count: data.count)
                try data.withUnsafeBytes { input in
                    try output.withUnsafeMutableBytes { try comm.allToAll(input, sendCounts: counts, into: $0, receiveCounts: counts) }
                }
            }
            throw CommandLineError.selftestMissedAStoppedRank(rank: dieRank ?? hangRank!)
        }
        let outcomes = try CommunicatorConformance.run(comm, lengths: CommunicatorConformance.defaultLengths(large: large))
        let failed = outcomes.filter { !$0.passed }
        if comm.rank == 0 {
            for outcome in outcomes { print(outcome) }
            print("\(outcomes.count - failed.count) passed, \(failed.count) failed")
        }
        if !failed.isEmpty { throw ExitCode(1) }
    }

    /// One line per comparison, then "N passed, M failed"; exit status 1 when one failed.
    func report(_ outcomes: [SelfTestOutcome]) throws {
        outcomes.forEach { print($0) }
        let failed = outcomes.filter { !$0.passed }.count
        print("\(outcomes.count - failed) passed, \(failed) failed (GEMM: \(Matmul.implementationDescription); OpenBLAS's \(BLASLibrary.coreName) kernels)")
        if failed > 0 { throw ExitCode(1) }
    }
}
