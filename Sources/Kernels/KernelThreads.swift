import COpenBLAS
import Dispatch

/// How many threads a kernel call may use, passed to every kernel as a value (never a
/// process-wide setting), so ranks that are threads of one process can use different counts.
///
/// Work is split into contiguous chunks, and every element is computed by the same code
/// whatever the split, so results do not depend on the count (large products excepted on
/// OpenBLAS cores whose kernels depend on a block's shape: `BLASLibrary.productsSplitExactly`). OpenBLAS itself always runs one
/// thread per call: its own threading synchronises inside every call, which costs more than
/// it gains on the mid-sized products of these models; `Matmul.gemm` splits large products
/// into blocks instead.
public struct KernelThreads: Equatable, Sendable, CustomStringConvertible {
    public let count: Int

    /// `count` below 1 means 1.
    public init(_ count: Int) {
        Self.blasSingleThreaded()
        self.count = max(1, count)
    }

    public static let single = KernelThreads(1)

    public var description: String { "\(count) kernel thread\(count == 1 ? "" : "s")" }

    /// Runs `body` on disjoint ranges covering 0..<count; inline when one thread is configured
    /// or the work is small. `minimumChunk` is in items: work below about 20 µs per chunk costs
    /// more to hand out than it saves.
    @inline(__always)
    public func forRanges(_ items: Int, minimumChunk: Int = 16_384, _ body: (Range<Int>) -> Void) {
        guard count > 1, items >= 2 * minimumChunk else { body(0..<items); return }
        let chunks = min(count, items / minimumChunk)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            body((c * items / chunks)..<((c + 1) * items / chunks))
        }
    }

    /// Like `forRanges` with one item as the smallest chunk, for items that call BLAS
    /// themselves (with `KernelThreads.single`: the items are the parallelism).
    public func forItems(_ items: Int, _ body: (Range<Int>) -> Void) {
        guard count > 1, items > 1 else { body(0..<items); return }
        let chunks = min(count, items)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            body((c * items / chunks)..<((c + 1) * items / chunks))
        }
    }

    private static let configureBLAS: Void = openblas_set_num_threads(1)
    private static func blasSingleThreaded() { _ = configureBLAS }
}
