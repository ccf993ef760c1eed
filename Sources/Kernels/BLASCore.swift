/// An OpenBLAS kernel family ("core") of a `DYNAMIC_ARCH` build, as `OPENBLAS_CORETYPE` and
/// `openblas_get_corename()` name it, with the vector level it runs at and what it needs.
public struct BLASCore: Sendable, Equatable {
    /// The name OpenBLAS uses ("SkylakeX"); `OPENBLAS_CORETYPE` takes it in any case.
    public let name: String
    /// The vector level of its kernels: 1 SSE2/SSE3, 2 SSSE3/SSE4, 3 AVX, 4 AVX2 + FMA,
    /// 5 AVX-512, 6 AVX-512 + BF16, 7 AMX (0: kernels older than SSE3, never chosen).
    public let level: Int
    /// What the CPU must offer to run it; nil for cores never chosen here (they are only ranked
    /// when the library picks them).
    public let needs: CPUFeatures?
    /// Among cores of one level, the one for AMD's CPUs (Zen) or for the others (Haswell).
    public let forAMD: Bool?

    /// Every x86-64 core name of OpenBLAS's dynamic-architecture builds (0.3.x), weakest first
    /// within each level. The position in this table is part of the re-exec marker
    /// (`BLASCoreChoice`): append, never reorder.
    public static let table: [BLASCore] = [
        BLASCore(name: "Unknown", level: 0, needs: nil, forAMD: nil),
        BLASCore(name: "Katmai", level: 0, needs: nil, forAMD: nil),
        BLASCore(name: "Coppermine", level: 0, needs: nil, forAMD: nil),
        BLASCore(name: "Northwood", level: 0, needs: nil, forAMD: nil),
        BLASCore(name: "Banias", level: 0, needs: nil, forAMD: nil),
        BLASCore(name: "Athlon", level: 0, needs: nil, forAMD: nil),
        BLASCore(name: "Prescott", level: 1, needs: [.sse3], forAMD: nil),
        BLASCore(name: "Atom", level: 1, needs: nil, forAMD: nil),
        BLASCore(name: "Opteron", level: 1, needs: nil, forAMD: nil),
        BLASCore(name: "Opteron_SSE3", level: 1, needs: nil, forAMD: nil),
        BLASCore(name: "Barcelona", level: 1, needs: nil, forAMD: nil),
        BLASCore(name: "Nano", level: 1, needs: nil, forAMD: nil),
        BLASCore(name: "Bobcat", level: 1, needs: nil, forAMD: nil),
        BLASCore(name: "Core2", level: 2, needs: [.sse3, .ssse3], forAMD: nil),
        BLASCore(name: "Penryn", level: 2, needs: nil, forAMD: nil),
        BLASCore(name: "Dunnington", level: 2, needs: nil, forAMD: nil),
        BLASCore(name: "Nehalem", level: 2, needs: [.sse3, .ssse3, .sse41, .sse42], forAMD: nil),
        BLASCore(name: "Sandybridge", level: 3, needs: [.sse42, .avx], forAMD: nil),
        BLASCore(name: "Bulldozer", level: 3, needs: nil, forAMD: nil),
        BLASCore(name: "Piledriver", level: 3, needs: nil, forAMD: nil),
        BLASCore(name: "Steamroller", level: 3, needs: nil, forAMD: nil),
        BLASCore(name: "Excavator", level: 4, needs: nil, forAMD: nil),
        BLASCore(name: "Haswell", level: 4, needs: [.avx, .avx2, .fma], forAMD: false),
        BLASCore(name: "Zen", level: 4, needs: [.avx, .avx2, .fma], forAMD: true),
        BLASCore(name: "SkylakeX", level: 5, needs: [.avx, .avx2, .fma, .avx512], forAMD: nil),
        BLASCore(name: "Cooperlake", level: 6, needs: [.avx, .avx2, .fma, .avx512, .avx512bf16], forAMD: nil),
        BLASCore(name: "SapphireRapids", level: 7, needs: [.avx, .avx2, .fma, .avx512, .avx512bf16, .amxBF16], forAMD: nil),
    ]

    /// The core of that name (any case), nil for a name OpenBLAS does not use.
    public static func named(_ name: String) -> BLASCore? {
        table.first { $0.name.lowercased() == name.lowercased() }
    }

    public static func index(of name: String) -> Int? {
        table.firstIndex { $0.name.lowercased() == name.lowercased() }
    }

    public func runs(on features: CPUFeatures) -> Bool { needs.map { features.isSuperset(of: $0) } ?? false }
}

/// Which OpenBLAS core a process should run, from what the CPU offers, what the installed
/// library ships and picked by itself, and what `OPENBLAS_CORETYPE` already says.
///
/// The rule: a core set in the environment (by the user or the machine) is kept; otherwise,
/// when the library picked a core of a lower vector level than the best one it ships that this
/// CPU runs (OpenBLAS 0.3.21 falls back to `Prescott`, SSE3, on Intel models it does not know),
/// switch to that best one. The library's own choice is kept at equal level (`Zen` and
/// `Haswell` run the same kernels).
public enum BLASCoreChoice: Equatable, Sendable {
    /// Not an x86-64 CPU: the library's choice stands, nothing is compared.
    case notX86(library: String)
    /// The library's own pick is as good as anything it ships for this CPU.
    case library(String)
    /// The library fell back to a weaker core: run `core` instead.
    case switchTo(core: String, libraryPicked: String)
    /// `OPENBLAS_CORETYPE` names a core the library knows and the CPU runs: it is kept.
    /// `best` is what would have been chosen without it.
    case environment(String, best: String)
    /// `OPENBLAS_CORETYPE` names no core this library ships, so it ignored it and picked `library`.
    case environmentIgnored(String, library: String)

    /// - Parameters:
    ///   - features: what the CPU offers (`CPUInfo.features`); `isX86` false for other CPUs.
    ///   - isAMD: the vendor, which only breaks ties between `Zen` and `Haswell`.
    ///   - libraryCores: the names of the cores the installed library ships.
    ///   - libraryPick: `openblas_get_corename()` (what the library runs now).
    ///   - environment: `OPENBLAS_CORETYPE`, nil or empty when unset.
    /// - Throws: `BLASCoreError.unsupportedByCPU` when the environment names a core whose
    ///   instructions this CPU lacks (it would die of an illegal instruction in its first product).
    public static func decide(features: CPUFeatures, isX86: Bool, isAMD: Bool, libraryCores: [String],
                              libraryPick: String, environment: String?) throws -> BLASCoreChoice {
        guard isX86 else { return .notX86(library: libraryPick) }
        let best = bestCore(features: features, isAMD: isAMD, libraryCores: libraryCores)
        if let environment, !environment.isEmpty {
            guard let set = BLASCore.named(environment), libraryCores.contains(where: { $0.lowercased() == set.name.lowercased() }) else {
                return .environmentIgnored(environment, library: libraryPick)
            }
            if let needs = set.needs, !features.isSuperset(of: needs) {
                throw BLASCoreError.unsupportedByCPU(core: set.name, missing: needs.subtracting(features), best: best?.name)
            }
            return .environment(set.name, best: best?.name ?? libraryPick)
        }
        guard let best, let picked = BLASCore.named(libraryPick), picked.level < best.level else {
            return .library(libraryPick)
        }
        return .switchTo(core: best.name, libraryPicked: picked.name)
    }

    /// The highest-level core of the library that this CPU runs (at equal level, the one meant
    /// for this vendor, then the one needing more: Nehalem over Core2); nil when none fits.
    public static func bestCore(features: CPUFeatures, isAMD: Bool, libraryCores: [String]) -> BLASCore? {
        let shipped = Set(libraryCores.map { $0.lowercased() })
        // Rank by level, then the vendor's own core, then the later (more demanding) entry of the table.
        let ranked = BLASCore.table.enumerated()
            .filter { shipped.contains($0.element.name.lowercased()) && $0.element.runs(on: features) }
            .map { (rank: [$0.element.level, $0.element.forAMD == isAMD ? 1 : 0, $0.offset], core: $0.element) }
        return ranked.max { $0.rank.lexicographicallyPrecedes($1.rank) }?.core
    }

    /// The core this process runs once the choice is carried out.
    public var running: String {
        switch self {
        case .notX86(let library), .library(let library), .environmentIgnored(_, let library): return library
        case .switchTo(let core, _): return core
        case .environment(let core, _): return core
        }
    }
}

/// How a process executed again with another core learns which core the library had picked:
/// the path it was executed through (`AT_EXECFN`), `/proc/PID/` + `./` repeated (1 + the
/// picked core's index in `BLASCore.table`) + `exe`. That path names the program itself, keeps
/// argv and the environment untouched, and nothing else uses it with the process's own pid.
public enum BLASCoreMarker {
    public static func path(pid: Int32, picked core: String) -> String? {
        guard let index = BLASCore.index(of: core) else { return nil }
        return "/proc/\(pid)/" + String(repeating: "./", count: index + 1) + "exe"
    }

    /// The core encoded in `path` for this `pid`; nil for any other path.
    public static func pickedCore(fromExecutedPath path: String, pid: Int32) -> String? {
        let prefix = "/proc/\(pid)/", suffix = "exe"
        guard path.hasPrefix(prefix), path.hasSuffix(suffix), path.count > prefix.count + suffix.count else { return nil }
        let middle = path.dropFirst(prefix.count).dropLast(suffix.count)
        guard middle.count % 2 == 0, middle.count / 2 <= BLASCore.table.count,
              String(middle) == String(repeating: "./", count: middle.count / 2) else { return nil }
        return BLASCore.table[middle.count / 2 - 1].name
    }
}

public enum BLASCoreError: Error, CustomStringConvertible, Equatable {
    case unsupportedByCPU(core: String, missing: CPUFeatures, best: String?)
    /// The kernels in use disagree with the naive product at start-up.
    case wrongResults(core: String, error: Double, setBy: String)

    public var description: String {
        switch self {
        case .unsupportedByCPU(let core, let missing, let best):
            return "OPENBLAS_CORETYPE=\(core) needs \(missing), which this CPU does not offer; "
                + (best.map { "set OPENBLAS_CORETYPE=\($0) (the best this library has for it) or unset it" } ?? "unset it")
        case .wrongResults(let core, let error, let setBy):
            return "OpenBLAS's \(core) kernels (\(setBy)) give wrong products on this CPU (relative error \(error) in a "
                + "start-up check against the naive product); set OPENBLAS_CORETYPE to another core, e.g. Prescott"
        }
    }
}
