import CBF16
import Foundation

/// bfloat16 numbers: the upper 16 bits of a Float32 (8 exponent bits, 7 mantissa bits).
///
/// Rounding (`round`): to nearest, ties to even; ±Inf and ±0 stay; Float32 denormals are
/// rounded like any other value (to bf16 denormals, not flushed); finite values past the
/// largest bf16 round to ±Inf; NaN stays NaN (made quiet, sign kept). Widening is exact.
/// The bf16 products (`BF16Matmul`) read bf16 denormals as zero, as `vdpbf16ps` does.
public enum BF16 {
    @inline(__always)
    public static func round(_ value: Float) -> UInt16 {
        let u = value.bitPattern
        if u & 0x7fff_ffff > 0x7f80_0000 { return UInt16((u | 0x0040_0000) >> 16) }
        return UInt16(truncatingIfNeeded: (u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16)
    }

    @inline(__always)
    public static func widen(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    /// The Float32 nearest to `value` that a bf16 holds.
    @inline(__always)
    public static func rounded(_ value: Float) -> Float { widen(round(value)) }

    /// `count` values rounded (vectorised; the same bits as `round`).
    public static func round(_ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>, count: Int) {
        tessera_bf16_round(source, destination, count, CPUInfo.current.features.contains(.avx512) ? 1 : 0)
    }

    public static func widen(_ source: UnsafePointer<UInt16>, into destination: UnsafeMutablePointer<Float>, count: Int) {
        tessera_bf16_widen(source, destination, count)
    }
}

/// The number format of the matrix products of linear layers and flash attention (`train.precision`).
public enum ComputePrecision: String, CaseIterable, Sendable {
    /// Float32 products (OpenBLAS).
    case fp32
    /// Inputs rounded to bf16, products accumulated in Float32 (`BF16Matmul`).
    case bf16
}

/// Which bf16 micro-kernel runs: the AVX512_BF16 instruction or its portable emulation. Both
/// give the same bits (the emulation follows `vdpbf16ps` step for step: odd pair element first,
/// each multiply-add fused and rounded to nearest even, denormal inputs read as zero, denormal
/// results flushed to zero), so a CPU without AVX512_BF16 trains in bf16 too, only slower.
public enum BF16Kernel: String, CaseIterable, Sendable {
    case hardware, portable

    /// Whether this CPU runs it.
    public var isAvailable: Bool {
        self == .portable || CPUInfo.current.features.isSuperset(of: [.avx512, .avx512bf16])
    }

    /// The hardware kernel when the CPU has AVX512_BF16, else the emulation; the environment
    /// variable TESSERA_BF16_KERNEL=portable forces the emulation (to test or time what a CPU
    /// without AVX512_BF16 runs).
    public static let best: BF16Kernel = {
        if ProcessInfo.processInfo.environment["TESSERA_BF16_KERNEL"] == "portable" { return .portable }
        return BF16Kernel.hardware.isAvailable ? .hardware : .portable
    }()
}
