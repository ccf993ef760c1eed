import Collectives
import Foundation
import Kernels

/// Chooses the OpenBLAS core before any numerics run (`BLASCoreChoice`), and says which one runs.
///
/// OpenBLAS reads `OPENBLAS_CORETYPE` only while it loads, so switching cores means executing
/// this program again with the variable set: same pid, same argv, and nothing added to the
/// environment but `OPENBLAS_CORETYPE` (children of `tessera launch` inherit it). Under mpirun
/// and srun this happens before `MPI_Init`, so the launcher sees the same process.
///
/// The new image learns that it was re-executed, and which core the library had picked, from
/// the path it was executed through (`BLASCoreMarker`: neither argv nor the environment).
///
/// After a switch a small product is checked against the naive one; on a mismatch the program
/// goes back to the library's own core the same way and says so in one line. Every start checks
/// the kernels it runs and refuses wrong ones in one line.
enum KernelSelection {
    /// What runs and why, for start lines and `tessera selftest blas`.
    enum Outcome {
        case decided(BLASCoreChoice)
        /// Switched to `tried`, which failed the product check, and went back to `library`.
        case wentBack(tried: String, library: String)
        /// The switch could not execute this program again (`reason`); the library's core stays.
        case couldNotSwitch(to: String, library: String, reason: String)
    }

    private(set) static var outcome: Outcome = .decided(.library(BLASLibrary.coreName))

    static let coreVariable = "OPENBLAS_CORETYPE"

    /// Test hooks (the fallback cannot otherwise be met on a CPU the library knows):
    /// `TESSERA_TEST_BLAS_FALLBACK=1` treats `OPENBLAS_CORETYPE` as the library's own pick, as if
    /// it had not known this CPU; `TESSERA_TEST_BLAS_CHECK_FAILS=1` makes the check after a
    /// switch fail.
    static let simulateFallbackVariable = "TESSERA_TEST_BLAS_FALLBACK"
    static let failCheckVariable = "TESSERA_TEST_BLAS_CHECK_FAILS"

    /// Runs first in `main`: may replace this process's image (and then does not return).
    /// Throws when the kernels that would run are unusable (`BLASCoreError`).
    static func apply() throws {
        let environment = ProcessInfo.processInfo.environment
        let cpu = CPUInfo.current
        if let picked = reexecutedFrom() {
            let running = BLASLibrary.coreName
            if running.lowercased() == picked.lowercased() {   // came back after a failed check
                try requireCorrectProducts(core: running, setBy: "the library's own choice")
                let tried = bestCore
                outcome = .wentBack(tried: tried?.name ?? "?", library: running)
                warn("the \(tried?.name ?? "chosen") BLAS kernels failed the start-up check against the naive product; using the library's own \(running) kernels")
                return
            }
            let error = environment[failCheckVariable] == "1" ? 1 : BLASLibrary.productError()
            if error > BLASLibrary.productTolerance {
                setenv(coreVariable, picked, 1)
                let reason = execute(pretendingPicked: picked)
                unsetenv(coreVariable)
                throw BLASCoreError.wrongResults(core: running, error: error, setBy: "chosen for this CPU; going back to \(picked) failed: \(reason)")
            }
            outcome = .decided(.switchTo(core: running, libraryPicked: picked))
            return
        }
        let simulated = environment[simulateFallbackVariable] == "1"
        let choice = try BLASCoreChoice.decide(features: cpu.features, isX86: isX86, isAMD: cpu.isAMD,
                                               libraryCores: BLASLibrary.shippedCores, libraryPick: BLASLibrary.coreName,
                                               environment: simulated ? nil : environment[coreVariable])
        if case .switchTo(let core, let picked) = choice {
            setenv(coreVariable, core, 1)
            let reason = execute(pretendingPicked: picked)
            if simulated { setenv(coreVariable, picked, 1) } else { unsetenv(coreVariable) }
            outcome = .couldNotSwitch(to: core, library: picked, reason: reason)
            warn("could not switch OpenBLAS to its \(core) kernels (\(reason)); running \(picked): set \(coreVariable)=\(core) before starting tessera")
        } else {
            outcome = .decided(choice)
        }
        let setBy: String
        if case .environment = choice { setBy = "set by \(coreVariable)" } else { setBy = "the library's own choice" }
        try requireCorrectProducts(core: BLASLibrary.coreName, setBy: setBy)
    }

    /// The best core the installed library ships for this CPU (what a switch goes to).
    static var bestCore: BLASCore? {
        BLASCoreChoice.bestCore(features: CPUInfo.current.features, isAMD: CPUInfo.current.isAMD, libraryCores: BLASLibrary.shippedCores)
    }

    static var isX86: Bool {
        #if arch(x86_64)
        return true
        #else
        return false
        #endif
    }

    private static func requireCorrectProducts(core: String, setBy: String) throws {
        let error = BLASLibrary.productError()
        if error > BLASLibrary.productTolerance { throw BLASCoreError.wrongResults(core: core, error: error, setBy: setBy) }
    }

    // MARK: Re-executing

    /// The core the library had picked before this image was executed by `execute`, or nil
    /// when this process was started any other way.
    static func reexecutedFrom() -> String? {
        // glibc's getauxval, which Swift's Glibc module does not import; AT_EXECFN is 31.
        typealias GetAuxiliaryValue = @convention(c) (UInt) -> UInt
        guard let handle = dlopen(nil, RTLD_NOW) else { return nil }
        defer { dlclose(handle) }
        guard let symbol = dlsym(handle, "getauxval"),
              let raw = UnsafePointer<CChar>(bitPattern: unsafeBitCast(symbol, to: GetAuxiliaryValue.self)(31)) else { return nil }
        return BLASCoreMarker.pickedCore(fromExecutedPath: String(cString: raw), pid: getpid())
    }

    /// Executes this program again through the marker path, with the same argv and the
    /// environment as it now is. Returns only on failure, with the reason.
    private static func execute(pretendingPicked picked: String) -> String {
        guard let path = BLASCoreMarker.path(pid: getpid(), picked: picked) else { return "\(picked) is not a core name Tessera knows" }
        fflush(stdout)
        fflush(stderr)
        execv(path, CommandLine.unsafeArgv)
        return "execv \(path): \(String(cString: strerror(errno)))"
    }

    // MARK: Reporting

    /// "OpenBLAS 0.3.21, Cooperlake kernels (the library's own choice, the best it has for AVX-512 + BF16)".
    static var summary: String {
        let cpu = CPUInfo.current
        let width = cpu.features.widest
        let core = BLASLibrary.coreName
        let why: String
        switch outcome {
        case .decided(.notX86):
            why = "the library's own choice"
        case .decided(.library):
            why = "the library's own choice, the best it has for \(width)"
        case .decided(.switchTo(_, let picked)):
            why = "chosen for \(width); the library picked \(picked)"
        case .decided(.environment(_, let best)):
            why = BLASCore.named(best)?.level == BLASCore.named(core)?.level
                ? "set by \(coreVariable), the best this library has for \(width)"
                : "set by \(coreVariable); the best this library has for \(width) is \(best)"
        case .decided(.environmentIgnored(let value, _)):
            why = "the library's own choice: it has no core named \(coreVariable)=\(value)"
        case .wentBack(let tried, _):
            why = "the library's own choice: \(tried) failed the start-up check"
        case .couldNotSwitch(let target, _, _):
            why = "the library's own choice: switching to \(target) failed"
        }
        return "\(BLASLibrary.name), \(core) kernels (\(why))"
    }

    /// The best core the library ships for this CPU when the running one is of a lower vector
    /// level (a setting or a failed switch); nil when the best runs. A GEMM peak measured on
    /// a weaker core is not this CPU's peak (docs/BENCHMARKS.md).
    static var weakerThanBest: String? {
        guard let best = bestCore, let running = BLASCore.named(BLASLibrary.coreName), running.level < best.level else { return nil }
        return best.name
    }

    /// The GEMM and BLAS lines of a start (rank 0 prints them) and, when ranks run different cores, a
    /// warning naming them. Collective over `comm`.
    static func startLines(comm: Communicator) throws -> [String] {
        let cores = try comm.allGatherBytes(Array(BLASLibrary.coreName.utf8)).map { String(decoding: $0, as: UTF8.self) }
        var lines = ["GEMM: \(Matmul.implementationDescription)", "BLAS: \(summary)"]
        if Set(cores).count > 1 {
            let groups = Dictionary(grouping: cores.indices, by: { cores[$0] }).sorted { $0.value[0] < $1.value[0] }
            let listed = groups.map { "\($0.key) on rank\($0.value.count == 1 ? "" : "s") \($0.value.map(String.init).joined(separator: ", "))" }.joined(separator: "; ")
            lines.append("warning: ranks run different BLAS kernels (\(listed)): results stay the same on every rank but are not bit-comparable with a one-rank run")
        }
        return lines
    }

    private static func warn(_ text: String) {
        let rank = ProcessEnvironment.worldRank.map { "rank \($0): " } ?? ""
        try? FileHandle.standardError.write(contentsOf: Data("tessera: \(rank)warning: \(text)\n".utf8))
    }
}
