import Foundation

/// Row operations on score tiles for the flash attention kernel, 8 lanes at a time
/// (`VectorMath.Lanes`). Each reduces in a fixed order, so a row gives the same bits wherever
/// and whenever it is computed.
enum TileMath {
    typealias Lanes = VectorMath.Lanes

    /// Below this, exp(x) is taken as 0: `VectorMath.exp` clamps its input at −87.3 (giving
    /// ≈ 1e−38 rather than 0), and masked scores (−∞) must contribute exactly nothing. Every
    /// caller subtracts at least the row maximum, so the values dropped are < 1.2e−38 of the
    /// largest term.
    static let underflow: Float = -87.3

    /// max of row[0..<count] (−∞ when count is 0). Not inlined: compiled on its own the
    /// loop is one `vmaxps` per 8 lanes, while inlined into the threaded forward tile it came
    /// out as compares, 128-bit blends and shuffles, 3× slower (12.8% of a 2-thread forward).
    @inline(never)
    static func maximum(_ row: UnsafePointer<Float>, count: Int) -> Float {
        var best = Lanes(repeating: -.infinity), j = 0
        while j + 8 <= count {
            // replace(with:where:) compiles to a compare and a blend; the generic pointwiseMax
            // is an out-of-line call per 8 lanes (a sixth of a forward pass in a profile).
            let x = VectorMath.load(row + j)
            best.replace(with: x, where: x .> best)
            j += 8
        }
        var result = best[0]   // (SIMD's max() is a generic call here)
        for lane in 1..<8 { result = max(result, best[lane]) }
        while j < count { result = max(result, row[j]); j += 1 }
        return result
    }

    /// row[j] = exp(row[j] − shift) (0 where row[j] − shift < `underflow`, so −∞ gives 0), in
    /// place; returns Σ_j of the new values. `shift` must be finite and at least the row's
    /// maximum less 88.7 (callers shift by the maximum or the logsumexp, so every value is at
    /// most 0): the exponentials skip `VectorMath.exp`'s clamps, since the lanes below
    /// `underflow` are zeroed anyway (the same bits; 10% of a forward pass was exp).
    @inline(__always)
    @discardableResult
    static func exponentiate(_ row: UnsafeMutablePointer<Float>, count: Int, minus shift: Float) -> Float {
        let offset = Lanes(repeating: shift), floor = Lanes(repeating: underflow)
        var sum = Lanes(repeating: 0), j = 0
        while j + 8 <= count {
            let x = VectorMath.load(row + j) - offset
            var e = VectorMath.expInRange(x)
            e.replace(with: 0, where: x .< floor)
            VectorMath.store(e, row + j)
            sum += e
            j += 8
        }
        if j < count {
            var x = Lanes(repeating: -.infinity)
            for t in j..<count { x[t - j] = row[t] - shift }
            var e = VectorMath.exp(x)
            e.replace(with: 0, where: x .< floor)
            for t in j..<count { row[t] = e[t - j] }
            sum += e
        }
        return sum.sum()
    }

    /// x[0..<count] *= factor.
    @inline(__always)
    static func scale(_ x: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        for d in 0..<count { x[d] *= factor }
    }

    /// dS = P ⊙ (dP − rowDot), written over dP, for one row.
    @inline(__always)
    static func softmaxGradient(probabilities p: UnsafePointer<Float>, _ dP: UnsafeMutablePointer<Float>, count: Int, rowDot: Float) {
        let shift = Lanes(repeating: rowDot)
        var j = 0
        while j + 8 <= count {
            VectorMath.store(VectorMath.load(p + j) * (VectorMath.load(dP + j) - shift), dP + j)
            j += 8
        }
        while j < count { dP[j] = p[j] * (dP[j] - rowDot); j += 1 }
    }

}
