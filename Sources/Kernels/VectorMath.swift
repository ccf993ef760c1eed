import Foundation

/// Vectorised transcendental functions for the elementwise kernels (8 lanes at a time).
///
/// `exp` uses range reduction x = n·ln2 + r, |r| ≤ ln2/2, and a degree-6 polynomial for e^r,
/// with relative error below 2e-7 over the float range (tested against `Foundation.exp`).
/// Every step is a fused multiply-add (`addingProduct`): one instruction in release builds
/// (AVX2 + FMA) instead of a dependent multiply and add, which made a flash
/// attention forward+backward about 5% faster; the bits are the same in every build.
/// Inputs below −87.3 give ≈ 1e-38 rather than denormals; above about 88.38, +∞.
public enum VectorMath {
    public typealias Lanes = SIMD8<Float>

    @inline(__always)
    public static func exp(_ x: Lanes) -> Lanes {
        var clamped = x
        clamped.replace(with: 88.7, where: x .> 88.7)
        clamped.replace(with: -87.3, where: x .< -87.3)
        return expInRange(clamped)
    }

    /// exp(x) for −87.3 ≤ x ≤ 88.7, the same bits as `exp` there; other lanes (−∞ and NaN
    /// included) get unspecified values, for callers that overwrite them anyway (the flash
    /// tiles' exponentials, whose inputs are at most 0 and which zero every lane below −87.3),
    /// saving `exp`'s two clamps.
    @inline(__always)
    public static func expInRange(_ clamped: Lanes) -> Lanes {
        // Round x·log2(e) to an integer n by adding 1.5·2²³: the sum's low mantissa bits are n.
        let magic = Lanes(repeating: 12_582_912)
        let shifted = magic.addingProduct(clamped, Lanes(repeating: 1.442_695_04))
        let n = shifted - magic
        var r = clamped.addingProduct(n, Lanes(repeating: -0.693_145_751_953_125))   // ln 2, high part
        r = r.addingProduct(n, Lanes(repeating: -1.428_606_765_330_187_045e-6))        // ln 2, low part
        let p = expReduced(r)
        let integer = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
        return p * unsafeBitCast((integer &+ 127) &<< 23, to: Lanes.self)
    }

    /// e^r for |r| ≤ ln2 / 2: the degree-6 polynomial of `expInRange` (also bf16 flash's 2^f,
    /// `TileMath.exponentiateInPowersOfTwo`).
    @inline(__always)
    static func expReduced(_ r: Lanes) -> Lanes {
        var p = Lanes(repeating: 1.0 / 120).addingProduct(Lanes(repeating: 1.0 / 720), r)
        p = Lanes(repeating: 1.0 / 24).addingProduct(p, r)
        p = Lanes(repeating: 1.0 / 6).addingProduct(p, r)
        p = Lanes(repeating: 0.5).addingProduct(p, r)
        p = Lanes(repeating: 1).addingProduct(p, r)
        return Lanes(repeating: 1).addingProduct(p, r)
    }

    /// out[i] = exp(x[i]) for i in 0..<count (out may alias x).
    @inline(__always)
    public static func exp(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            let v = UnsafeRawPointer(x + i).loadUnaligned(as: Lanes.self)
            UnsafeMutableRawPointer(out + i).storeBytes(of: exp(v), as: Lanes.self)
            i += 8
        }
        if i < count {
            var tail = Lanes(repeating: 0)
            for j in i..<count { tail[j - i] = x[j] }
            let e = exp(tail)
            for j in i..<count { out[j] = e[j - i] }
        }
    }

    /// Σ_j a_j · b_j in four 8-lane partial sums, then the lanes in order (a single scalar sum
    /// waits on every addition: it was most of RMSNorm's time and of the clipping norm's). The
    /// same bits for the same inputs wherever they are computed.
    @inline(__always)
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var (p0, p1, p2, p3) = (Lanes(), Lanes(), Lanes(), Lanes())
        var j = 0
        while j + 32 <= count {
            p0 = p0.addingProduct(load(a + j), load(b + j))
            p1 = p1.addingProduct(load(a + j + 8), load(b + j + 8))
            p2 = p2.addingProduct(load(a + j + 16), load(b + j + 16))
            p3 = p3.addingProduct(load(a + j + 24), load(b + j + 24))
            j += 32
        }
        while j + 8 <= count {
            p0 = p0.addingProduct(load(a + j), load(b + j))
            j += 8
        }
        let lanes = (p0 + p1) + (p2 + p3)
        var sum: Float = 0
        for lane in 0..<8 { sum += lanes[lane] }
        while j < count { sum += a[j] * b[j]; j += 1 }
        return sum
    }

    @inline(__always)
    public static func load(_ p: UnsafePointer<Float>) -> Lanes { UnsafeRawPointer(p).loadUnaligned(as: Lanes.self) }

    @inline(__always)
    public static func store(_ v: Lanes, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lanes.self) }
}
