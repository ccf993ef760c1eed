/// Depthwise causal convolution along the sequence (Mamba's `conv1d`, `groups = channels`,
/// `padding = width − 1`, cut back to the input length): each channel is filtered by its own
/// `width` taps over the current and the `width − 1` previous positions of its sample.
///
/// Layouts: x and y (B·T, C) row-major (x may be a column slice of a wider matrix), weight
/// (C, W) as PyTorch's (C, 1, W) squeezed (tap W − 1 multiplies the current position), bias (C).
/// Rows are split over the kernel threads; every element is summed in the same order whatever
/// the split.
public enum DepthwiseCausalConv {
    /// y[t, c] = bias[c] + Σ_k weight[c, k] · x[t − (W − 1) + k, c], x before a sample starts
    /// taken from `history` (B, W − 1, C), the W − 1 inputs preceding each sample (a sequence
    /// cut into pieces), or 0 without it.
    public static func forward(x: StridedRows, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, y: MutableStridedRows,
                               batch: Int, length: Int, channels: Int, width: Int, history: UnsafePointer<Float>? = nil,
                               threads: KernelThreads = .single) {
        threads.forRanges(batch * length, minimumChunk: max(1, 16_384 / max(1, channels * width))) { rows in
            for r in rows {
                let out = y.row(r)
                out.update(from: bias, count: channels)
                for k in 0..<width {
                    guard let input = row(r, tap: k, x: x, history: history, length: length, channels: channels, width: width) else { continue }
                    for c in 0..<channels { out[c] += weight[c * width + k] * input[c] }
                }
            }
        }
    }

    /// The input row tap k of output row r reads: x's, `history`'s before the sample starts, or nil (zeros).
    @inline(__always) static func row(_ r: Int, tap k: Int, x: StridedRows, history: UnsafePointer<Float>?, length: Int,
                                      channels: Int, width: Int) -> UnsafePointer<Float>? {
        let q = r % length - (width - 1) + k
        if q >= 0 { return x.row(r - (width - 1) + k) }
        guard let history else { return nil }
        return history + ((r / length) * (width - 1) + (width - 1) + q) * channels
    }

    /// dx (overwritten) = ∂L/∂x; dWeight and dBias accumulate ∂L/∂weight, ∂L/∂bias, from dy.
    /// With the forward pass's `history`, `dHistory` (B, W − 1, C) is overwritten with ∂L/∂history.
    public static func backward(x: StridedRows, weight: UnsafePointer<Float>, dy: StridedRows, dx: MutableStridedRows,
                                dWeight: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>,
                                batch: Int, length: Int, channels: Int, width: Int, history: UnsafePointer<Float>? = nil,
                                dHistory: UnsafeMutablePointer<Float>? = nil, threads: KernelThreads = .single) {
        if let dHistory {
            // dHistory[s, j, c] = Σ_{k ≤ j} weight[c, k] · dy[s, j − k, c] (history row j is position j − (W − 1)).
            for sample in 0..<batch {
                for j in 0..<(width - 1) {
                    let out = dHistory + (sample * (width - 1) + j) * channels
                    out.update(repeating: 0, count: channels)
                    for k in 0...j where j - k < length {
                        let grad = dy.row(sample * length + j - k)
                        for c in 0..<channels { out[c] += weight[c * width + k] * grad[c] }
                    }
                }
            }
        }
        // dx[t, c] = Σ_k weight[c, k] · dy[t + (W − 1) − k, c] over the positions of the same sample.
        threads.forRanges(batch * length, minimumChunk: max(1, 16_384 / max(1, channels * width))) { rows in
            for r in rows {
                let t = r % length, out = dx.row(r)
                out.update(repeating: 0, count: channels)
                for k in 0..<width where t + (width - 1) - k < length {
                    let grad = dy.row(r + (width - 1) - k)
                    for c in 0..<channels { out[c] += weight[c * width + k] * grad[c] }
                }
            }
        }
        // Parameter gradients: sums over every row, one channel range per thread.
        threads.forRanges(channels, minimumChunk: max(1, 16_384 / max(1, batch * length * width))) { range in
            let count = range.count
            let sums = UnsafeMutablePointer<Float>.allocate(capacity: count * (width + 1))
            defer { sums.deallocate() }
            sums.update(repeating: 0, count: count * (width + 1))
            for r in 0..<(batch * length) {
                let grad = dy.row(r) + range.lowerBound
                for i in 0..<count { sums[count * width + i] += grad[i] }
                for k in 0..<width {
                    guard let input = row(r, tap: k, x: x, history: history, length: length, channels: channels, width: width)
                    else { continue }
                    for i in 0..<count { sums[i * width + k] += grad[i] * input[i + range.lowerBound] }
                }
            }
            for i in 0..<count {
                let c = range.lowerBound + i
                for k in 0..<width { dWeight[c * width + k] += sums[i * width + k] }
                dBias[c] += sums[count * width + i]
            }
        }
    }

    /// One new position: y (C) from x (C) and `window` (C, W − 1), the previous W − 1 inputs of
    /// each channel, oldest first (zeros before the sequence starts); the window then moves on
    /// by one (x becomes its newest entry).
    public static func step(x: UnsafePointer<Float>, window: UnsafeMutablePointer<Float>, weight: UnsafePointer<Float>,
                            bias: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, channels: Int, width: Int) {
        let kept = width - 1
        for c in 0..<channels {
            let past = window + c * kept, taps = weight + c * width
            var sum = bias[c]
            for k in 0..<kept { sum += taps[k] * past[k] }
            sum += taps[kept] * x[c]
            y[c] = sum
            if kept > 0 {
                for k in 0..<(kept - 1) { past[k] = past[k + 1] }
                past[kept - 1] = x[c]
            }
        }
    }
}
