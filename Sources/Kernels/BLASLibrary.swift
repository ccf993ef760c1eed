import COpenBLAS
import Foundation

/// The OpenBLAS library this process loaded: its version, the core (kernel family) it runs and
/// the cores it ships.
public enum BLASLibrary {
    /// "Cooperlake": the core whose kernels every product of this process runs.
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Cooperlake MAX_THREADS=64".
    public static var configuration: String { String(cString: openblas_get_config()) }

    /// "OpenBLAS 0.3.21" (the first two words of the configuration).
    public static var name: String { configuration.split(separator: " ").prefix(2).joined(separator: " ") }

    /// OpenBLAS's own thread count (Tessera keeps it at 1 and splits products itself).
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// The cores of `BLASCore.table` this library was built with. A `DYNAMIC_ARCH` build exports
    /// one kernel table `gotoblas_<NAME>` per core; cores left out of the build keep a
    /// zero-filled placeholder (its first field, the DTB entry count, is 0). A library built
    /// for one CPU only exports none: then its own core is all it has.
    public static let shippedCores: [String] = {
        let own = coreName
        guard let handle = dlopen(nil, RTLD_NOW) else { return [own] }
        defer { dlclose(handle) }
        var found = BLASCore.table.map(\.name).filter { name in
            guard let table = dlsym(handle, "gotoblas_" + name.uppercased()) else { return false }
            return table.load(as: Int32.self) != 0
        }
        if !found.contains(where: { $0.lowercased() == own.lowercased() }) { found.append(own) }
        return found
    }()

    /// Largest relative error of a small product with odd sizes (beta 0 and 1, both transposes)
    /// against the Float64 naive product, scaled by the sum of magnitudes: a correct kernel
    /// stays near Float32 rounding (below 1e-6), a broken one far above.
    public static func productError() -> Double {
        let m = 37, n = 29, k = 53
        // Values in [-1, 1) from a multiplicative hash: fixed, and no generator needed.
        func values(_ count: Int, _ seed: UInt32) -> [Float] {
            (0..<count).map { Float(Int32(bitPattern: (UInt32($0) &+ seed) &* 2_654_435_761)) / 2_147_483_648 }
        }
        let a = values(m * k, 1), b = values(k * n, 2), c0 = values(m * n, 3)
        var worst = 0.0
        for (transposeA, transposeB, beta) in [(false, false, Float(0)), (true, false, 1), (false, true, 1), (true, true, 0)] {
            var c = c0
            a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                Matmul.gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k,
                            a: ap.baseAddress!, lda: transposeA ? m : k, b: bp.baseAddress!, ldb: transposeB ? k : n,
                            beta: beta, c: cp.baseAddress!, ldc: n, implementation: .openblas)
            } } }
            for i in 0..<m {
                for j in 0..<n {
                    var exact = Double(beta) * Double(c0[i * n + j]), magnitude = abs(exact)
                    for p in 0..<k {
                        let product = Double(transposeA ? a[p * m + i] : a[i * k + p]) * Double(transposeB ? b[j * k + p] : b[p * n + j])
                        exact += product
                        magnitude += abs(product)
                    }
                    worst = max(worst, abs(Double(c[i * n + j]) - exact) / max(magnitude, .leastNormalMagnitude))
                }
            }
        }
        return worst
    }

    /// Whether a product cut into blocks of rows or columns (as `Matmul.gemm` cuts large ones
    /// over kernel threads) gives the bits of the whole product. It does on OpenBLAS's
    /// SkylakeX, Cooperlake and Prescott kernels; on Haswell and Zen the kernels and blocking
    /// chosen for a product depend on its shape, so the thread count moves large products in
    /// the last bit (measured on OpenBLAS 0.3.21). Probed once on a 1000 × 96 × 96 product.
    public static let productsSplitExactly: Bool = {
        let m = 1000, n = 96, k = 96, cut = 500
        let a = (0..<(m * k)).map { Float(Int32(bitPattern: UInt32($0) &* 2_654_435_761)) / 2_147_483_648 }
        let b = (0..<(n * k)).map { Float(Int32(bitPattern: (UInt32($0) &+ 7) &* 2_246_822_519)) / 2_147_483_648 }
        var whole = [Float](repeating: 0, count: m * n), rows = whole
        var wide = [Float](repeating: 0, count: n * m), columns = wide
        a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in
            let a = a.baseAddress!, b = b.baseAddress!
            whole.withUnsafeMutableBufferPointer { c in   // (m, n) = A · Bᵀ, and in two blocks of rows
                Matmul.gemm(transposeA: false, transposeB: true, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: c.baseAddress!, ldc: n, implementation: .openblas)
            }
            rows.withUnsafeMutableBufferPointer { c in
                Matmul.gemm(transposeA: false, transposeB: true, m: cut, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: c.baseAddress!, ldc: n, implementation: .openblas)
                Matmul.gemm(transposeA: false, transposeB: true, m: m - cut, n: n, k: k, a: a + cut * k, lda: k, b: b, ldb: k,
                            c: c.baseAddress! + cut * n, ldc: n, implementation: .openblas)
            }
            wide.withUnsafeMutableBufferPointer { c in    // (n, m) = B · Aᵀ, and in two blocks of columns
                Matmul.gemm(transposeA: false, transposeB: true, m: n, n: m, k: k, a: b, lda: k, b: a, ldb: k, c: c.baseAddress!, ldc: m, implementation: .openblas)
            }
            columns.withUnsafeMutableBufferPointer { c in
                Matmul.gemm(transposeA: false, transposeB: true, m: n, n: cut, k: k, a: b, lda: k, b: a, ldb: k, c: c.baseAddress!, ldc: m, implementation: .openblas)
                Matmul.gemm(transposeA: false, transposeB: true, m: n, n: m - cut, k: k, a: b, lda: k, b: a + cut * k, ldb: k,
                            c: c.baseAddress! + cut, ldc: m, implementation: .openblas)
            }
        } }
        return whole.map(\.bitPattern) == rows.map(\.bitPattern) && wide.map(\.bitPattern) == columns.map(\.bitPattern)
    }()

    /// Above this relative error (scaled by the sum of magnitudes) the kernels are wrong:
    /// Float32 accumulation over k = 53 stays below about 53 · 2⁻²⁴ ≈ 3e-6.
    public static let productTolerance = 1e-4
}
