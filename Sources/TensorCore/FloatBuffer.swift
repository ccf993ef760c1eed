#if canImport(Glibc)
import Glibc
#endif

/// A fixed-size, zero-initialised, heap-allocated Float32 buffer with a stable address, for
/// activations, gradients and workspaces that kernels write through raw pointers.
///
/// Buffers of `largeBytes` or more are mapped from the operating system directly (`mmap`):
/// their pages arrive zeroed, go back to the system when the buffer is released (the C
/// allocator would keep them for reuse, so a transient workspace would stay in the resident
/// set), and are asked to be transparent huge pages (`MADV_HUGEPAGE`, honoured when the
/// kernel's THP mode is `madvise` or `always`): kernels walk attention heads and weight
/// matrices with large strides, and with 4 KiB pages those walks miss the TLB every few rows.
public final class FloatBuffer {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    /// The mapping behind a large buffer (nil: allocated with the C allocator).
    private let mapping: (base: UnsafeMutableRawPointer, bytes: Int)?

    /// Size from which a buffer is mapped directly.
    public static let largeBytes = 4 << 20
    static let hugePage = 2 << 20

    public init(count: Int) {
        self.count = count
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        #if canImport(Glibc)
        if bytes >= Self.largeBytes {
            // One extra huge page of address space so the buffer can start on a 2 MiB boundary.
            let length = bytes + Self.hugePage
            if let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), base != MAP_FAILED {
                let aligned = (Int(bitPattern: base) + Self.hugePage - 1) / Self.hugePage * Self.hugePage
                let start = UnsafeMutableRawPointer(bitPattern: aligned)!
                _ = madvise(start, bytes, 14 /* MADV_HUGEPAGE */)
                mapping = (base, length)
                pointer = start.bindMemory(to: Float.self, capacity: count)   // fresh pages are zero
                return
            }
        }
        #endif
        mapping = nil
        pointer = .allocate(capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    deinit {
        #if canImport(Glibc)
        if let mapping {
            munmap(mapping.base, mapping.bytes)
            return
        }
        #endif
        pointer.deallocate()
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }
    public var array: [Float] { Array(buffer) }

    public func zero() { pointer.update(repeating: 0, count: count) }

    public subscript(_ i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
}
