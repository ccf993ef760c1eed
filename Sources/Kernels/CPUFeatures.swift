import Foundation
import CCPUID

/// The vector instruction sets this CPU offers and the operating system lets programs use,
/// read from CPUID and XGETBV (feature bits, never model numbers: a model the tables do not
/// know yet still reports what it can do). Empty on CPUs other than x86-64.
public struct CPUFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let sse3 = CPUFeatures(rawValue: 1 << 0)
    public static let ssse3 = CPUFeatures(rawValue: 1 << 1)
    public static let sse41 = CPUFeatures(rawValue: 1 << 2)
    public static let sse42 = CPUFeatures(rawValue: 1 << 3)
    /// AVX with the OS saving the 256-bit registers.
    public static let avx = CPUFeatures(rawValue: 1 << 4)
    public static let avx2 = CPUFeatures(rawValue: 1 << 5)
    public static let fma = CPUFeatures(rawValue: 1 << 6)
    /// AVX-512 F, CD, BW, DQ and VL together (what every AVX-512 kernel here assumes) with the
    /// OS saving the 512-bit and mask registers.
    public static let avx512 = CPUFeatures(rawValue: 1 << 7)
    /// AVX512_BF16 (`vdpbf16ps`).
    public static let avx512bf16 = CPUFeatures(rawValue: 1 << 8)
    /// AMX tiles with BF16 products, with the OS saving the tile state.
    public static let amxBF16 = CPUFeatures(rawValue: 1 << 9)

    static let names: [(CPUFeatures, String)] = [
        (.sse3, "SSE3"), (.ssse3, "SSSE3"), (.sse41, "SSE4.1"), (.sse42, "SSE4.2"), (.avx, "AVX"), (.avx2, "AVX2"),
        (.fma, "FMA"), (.avx512, "AVX-512"), (.avx512bf16, "AVX512_BF16"), (.amxBF16, "AMX-BF16"),
    ]

    /// "AVX2 FMA AVX-512": every feature present, lowest first.
    public var description: String {
        let present = Self.names.filter { contains($0.0) }.map(\.1)
        return present.isEmpty ? "none" : present.joined(separator: " ")
    }

    /// The widest vector unit named, for messages: "AVX-512 + BF16", "AVX2", "SSE3".
    public var widest: String {
        if contains([.avx512, .avx512bf16]) { return "AVX-512 + BF16" }
        for (feature, name) in Self.names.reversed() where feature != .amxBF16 && feature != .avx512bf16 && contains(feature) {
            return name
        }
        return "no vector extensions"
    }
}

/// What CPUID says about this processor.
public struct CPUInfo: Sendable {
    public let vendor: String
    /// The brand string ("AMD EPYC 9R14 96-Core Processor"); the vendor when there is none.
    public let modelName: String
    public let features: CPUFeatures

    public init(vendor: String, modelName: String, features: CPUFeatures) {
        self.vendor = vendor
        self.modelName = modelName
        self.features = features
    }

    public var isAMD: Bool { vendor == "AuthenticAMD" || vendor == "HygonGenuine" }

    /// Read once per process.
    public static let current: CPUInfo = {
        #if arch(x86_64)
        return read()
        #else
        return CPUInfo(vendor: "", modelName: "", features: [])
        #endif
    }()

    static func cpuid(_ leaf: UInt32, _ subleaf: UInt32 = 0) -> [UInt32] {
        var regs = [UInt32](repeating: 0, count: 4)
        regs.withUnsafeMutableBufferPointer { tessera_cpuid(leaf, subleaf, $0.baseAddress) }
        return regs
    }

    static func bit(_ register: UInt32, _ index: Int) -> Bool { register & (1 << UInt32(index)) != 0 }

    static func text(_ registers: [UInt32]) -> String {
        var bytes: [UInt8] = []
        for register in registers { for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8((register >> UInt32(shift)) & 0xFF)) } }
        return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self).trimmingCharacters(in: .whitespaces)
    }

    static func read() -> CPUInfo {
        let leaf0 = cpuid(0)
        let vendor = text([leaf0[1], leaf0[3], leaf0[2]])
        let leaf1 = cpuid(1), leaf7 = cpuid(7, 0), leaf7s1 = cpuid(7, 1)
        // XCR0: which register states the OS saves; without them the instructions fault.
        let osXSAVE = bit(leaf1[2], 27)
        let xcr0 = osXSAVE ? tessera_xgetbv(0) : 0
        let ymmSaved = xcr0 & 0x6 == 0x6
        let zmmSaved = ymmSaved && xcr0 & 0xE0 == 0xE0
        let tilesSaved = xcr0 & 0x60000 == 0x60000
        var features: CPUFeatures = []
        if bit(leaf1[2], 0) { features.insert(.sse3) }
        if bit(leaf1[2], 9) { features.insert(.ssse3) }
        if bit(leaf1[2], 19) { features.insert(.sse41) }
        if bit(leaf1[2], 20) { features.insert(.sse42) }
        if ymmSaved && bit(leaf1[2], 28) { features.insert(.avx) }
        if ymmSaved && bit(leaf1[2], 12) { features.insert(.fma) }
        if ymmSaved && bit(leaf7[1], 5) { features.insert(.avx2) }
        // F (16), DQ (17), CD (28), BW (30), VL (31).
        if zmmSaved && [16, 17, 28, 30, 31].allSatisfy({ bit(leaf7[1], $0) }) { features.insert(.avx512) }
        if features.contains(.avx512) && bit(leaf7s1[0], 5) { features.insert(.avx512bf16) }
        if tilesSaved && bit(leaf7[3], 22) && bit(leaf7[3], 24) { features.insert(.amxBF16) }
        let maxExtended = cpuid(0x8000_0000)[0]
        let brand = maxExtended >= 0x8000_0004 ? text((0x8000_0002...0x8000_0004).flatMap { cpuid(UInt32($0)) }) : ""
        return CPUInfo(vendor: vendor, modelName: brand.isEmpty ? vendor : brand, features: features)
    }
}
