import TensorCore

/// Largest |a - b| / max(1, |b|) over two equal-length sequences (relative error with an
/// absolute floor, so values near zero are compared absolutely).
public func maxRelativeError<A: Collection, B: Collection>(_ a: A, _ b: B) -> Double
where A.Element: BinaryFloatingPoint, B.Element: BinaryFloatingPoint {
    precondition(a.count == b.count, "maxRelativeError: lengths \(a.count) and \(b.count) differ")
    var worst = 0.0
    for (x, y) in zip(a, b) {
        let dx = Double(x), dy = Double(y)
        if dx.isNaN || dy.isNaN { return .infinity }
        worst = max(worst, abs(dx - dy) / max(1, abs(dy)))
    }
    return worst
}

/// True when every pair agrees within `tolerance` (see `maxRelativeError`).
public func allClose<A: Collection, B: Collection>(_ a: A, _ b: B, tolerance: Double) -> Bool
where A.Element: BinaryFloatingPoint, B.Element: BinaryFloatingPoint {
    a.count == b.count && maxRelativeError(a, b) <= tolerance
}
