import Foundation
import Kernels

/// `tessera selftest blas`: which BLAS kernels run, why, and how fast they are on this CPU.
enum BLASReport {
    /// Below this fraction of the least the CPU's vector width allows (one FMA unit at the
    /// reported clock), the kernels are not using the vector unit: a fallback core, or a
    /// machine far slower than it says.
    /// The reported clock is the base clock, below what a boosting core runs at, so the
    /// fraction is generous: the SSE3 fallback kernels reach 0.4-0.6 of it on AVX-512 CPUs,
    /// the right kernels 1.5-3.
    static let warningFraction = 0.75

    static func run(threads: Int) throws {
        let cpu = CPUInfo.current
        let n = 1024
        let gflops = try GemmBench.peak(n: n, threads: KernelThreads(threads), implementation: .openblas)
        print("BLAS: \(KernelSelection.summary)")
        print("library: \(BLASLibrary.configuration); its cores for x86-64: \(BLASLibrary.shippedCores.joined(separator: " "))")
        print("threads: \(threads) per product (Tessera splits products itself; OpenBLAS's own threads: \(BLASLibrary.threads))")
        print("CPU: \(cpu.modelName) (\(cpu.vendor)); vector features: \(cpu.features)")
        print("GEMM: \(Matmul.implementationDescription) (kernels.gemm; Tessera's kernels here: \(TesseraGemm.ISA.available(on: cpu.features).map(\.rawValue).joined(separator: " ")))")
        print("bf16 products (train.precision bf16): " + (BF16Kernel.best == .hardware ? "vdpbf16ps (AVX512_BF16)"
            : "the portable emulation of vdpbf16ps (same bits, slower)" + (BF16Kernel.hardware.isAvailable ? ", forced by TESSERA_BF16_KERNEL" : ": this CPU has no AVX512_BF16")))
        print(BLASLibrary.productsSplitExactly
              ? "thread counts: large products split over threads give the bits of one thread (OpenBLAS; Tessera's GEMM always does)"
              : "thread counts: these OpenBLAS kernels compute a product cut into blocks differently from the whole, so train.threads moves large products in the last bits with kernels.gemm: openblas (runs stay exact on any one thread count; Tessera's GEMM gives the same bits for any count)")
        var line = String(format: "OpenBLAS GEMM peak: %.1f GFLOP/s (n = %d, Float32, %d thread%@)", gflops, n, threads, threads == 1 ? "" : "s")
        if let ghz = clockGHz(), let lanes = lanes(cpu.features) {
            let perCycle = gflops / ghz / Double(threads)
            let least = 2 * Double(lanes)
            line += String(format: ", %.1f FLOP per cycle at %.2f GHz", perCycle, ghz)
            print(line)
            if perCycle < warningFraction * least {
                print(String(format: "warning: that is far below what %@ allows (%.0f FLOP per cycle with one FMA unit): "
                             + "check OPENBLAS_CORETYPE and what else runs on this machine", cpu.features.widest, least))
            }
        } else {
            print(line)
        }
        if let best = KernelSelection.weakerThanBest {
            print("warning: the \(BLASLibrary.coreName) kernels do not use all of this CPU's vector unit (\(cpu.features.widest)); "
                  + "this library's \(best) kernels do: unset OPENBLAS_CORETYPE or set it to \(best)")
        }
    }

    /// Float32 lanes of the widest vector unit.
    static func lanes(_ features: CPUFeatures) -> Int? {
        if features.contains(.avx512) { return 16 }
        if features.contains(.avx) { return 8 }
        if features.contains(.sse3) { return 4 }
        return nil
    }

    /// The clock the kernel reports in /proc/cpuinfo ("cpu MHz"), in GHz.
    static func clockGHz() -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("cpu MHz") {
            if let value = line.split(separator: ":").last.flatMap({ Double($0.trimmingCharacters(in: .whitespaces)) }), value > 0 {
                return value / 1000
            }
        }
        return nil
    }
}
