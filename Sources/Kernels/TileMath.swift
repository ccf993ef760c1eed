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

    /// log2(e) and ln(2) as the bf16 softmax (`exponentiateInPowersOfTwo`) uses them.
    static let log2e: Float = 1.442_695_04, ln2: Float = 0.693_147_18

    /// bf16 flash attention's probabilities: row[j] = 2^(t_j − power), t_j = row[j] · log2(e)
    /// (a Float32 product), in place; returns Σ_j of the new values. `power` must be an
    /// integer (as a Float) at least max_j t_j. Each value is made as p_j · 2^(n_j − power)
    /// with n_j = t_j rounded to an integer and p_j = 2^(t_j − n_j) (t_j − n_j is exact), so p_j
    /// depends on the score alone and the power of two scales it exactly: rounded to bf16, the
    /// value is the same bf16 value scaled by 2^(−power) whatever `power` is — ring attention,
    /// which meets the keys in other chunks and so with other running maxima, rounds P the same
    /// way as one rank does. Values below 2^−125 of 2^power (n_j − power < −125, where the
    /// scaled value could leave the normal range and round differently) are 0, as are −∞ scores.
    @inline(__always)
    @discardableResult
    static func exponentiateInPowersOfTwo(_ row: UnsafeMutablePointer<Float>, count: Int, minus power: Float) -> Float {
        let top = Lanes(repeating: power), bottom = Lanes(repeating: power - 126)
        var sum = Lanes(repeating: 0), j = 0
        while j + 8 <= count {
            let e = powerOfTwo(VectorMath.load(row + j) * Lanes(repeating: log2e), minus: top, bottom: bottom)
            VectorMath.store(e, row + j)
            sum += e
            j += 8
        }
        if j < count {
            var x = Lanes(repeating: -.infinity)
            for t in j..<count { x[t - j] = row[t] }
            let e = powerOfTwo(x * Lanes(repeating: log2e), minus: top, bottom: bottom)
            for t in j..<count { row[t] = e[t - j] }
            sum += e
        }
        return sum.sum()
    }

    /// 2^(t − top) lane by lane for t ≤ top (`top` an integer, `bottom` = top − 126); 0 where
    /// the integer part n of t is below top − 125.
    @inline(__always)
    private static func powerOfTwo(_ t: Lanes, minus top: Lanes, bottom: Lanes) -> Lanes {
        var clamped = t
        clamped.replace(with: bottom, where: t .< bottom)   // −∞ included
        let n = clamped.rounded(.toNearestOrEven)
        let r = (clamped - n) * Lanes(repeating: ln2)       // t − n exact, |t − n| ≤ 1/2
        let p = VectorMath.expReduced(r)   // 2^(t − n) = e^r
        // n − top in −126...0 (exact: both integers, n ≥ top − 126), read as an integer by
        // adding 1.5 · 2²³, made the exponent of 2^(n − top).
        let magic = Lanes(repeating: 12_582_912), k = n - top
        let integer = unsafeBitCast(k + magic, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
        var e = p * unsafeBitCast((integer &+ 127) &<< 23, to: Lanes.self)
        e.replace(with: 0, where: k .< Lanes(repeating: -125))
        return e
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
