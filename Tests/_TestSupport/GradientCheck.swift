import TensorCore

/// Finite-difference gradients in Float64.
public enum GradientCheck {
    /// Central differences of a scalar function at `x`: (f(x + h eᵢ) − f(x − h eᵢ)) / 2h.
    public static func numeric(at x: [Double], h: Double = 1e-5, _ f: ([Double]) -> Double) -> [Double] {
        var probe = x
        return x.indices.map { i in
            probe[i] = x[i] + h
            let up = f(probe)
            probe[i] = x[i] - h
            let down = f(probe)
            probe[i] = x[i]
            return (up - down) / (2 * h)
        }
    }

    /// Σ yᵢ·wᵢ: a scalar probe of a vector output, so a backward pass seeded with `w` is the
    /// gradient of this sum.
    public static func dot(_ y: [Double], _ w: [Double]) -> Double {
        zip(y, w).reduce(0) { $0 + $1.0 * $1.1 }
    }

    /// ‖a − b‖ / max(‖b‖, floor): one number for a whole gradient.
    public static func relativeError(_ a: [Float], _ b: [Double], floor: Double = 1e-3) -> Double {
        precondition(a.count == b.count)
        var diff = 0.0, norm = 0.0
        for (x, y) in zip(a, b) { diff += (Double(x) - y) * (Double(x) - y); norm += y * y }
        return diff.squareRoot() / max(norm.squareRoot(), floor)
    }
}

/// Deterministic test data.
public enum Fixtures {
    public static func randoms(_ count: Int, seed: UInt64, scale: Double = 1) -> [Float] {
        var rng = RNG(seed: seed)
        return (0..<count).map { _ in Float(rng.nextNormal() * scale) }
    }
}

extension Array where Element == Float {
    public var doubles: [Double] { map(Double.init) }
}

extension Array where Element == Double {
    public var floats: [Float] { map(Float.init) }
}
