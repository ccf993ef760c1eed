import Foundation
import TokenData

/// The resident memory of this process, from /proc/self/statm (Linux), and the high-water mark
/// of one piece of work measured by sampling it.
///
/// getrusage's ru_maxrss is the process's lifetime peak, so it says nothing about one call
/// once anything earlier grew further. Instead a background thread reads the resident set
/// size every millisecond while the work runs (and once more when it ends); the growth is the
/// largest sample minus the size before. Memory freed back to the allocator earlier can be
/// reused without growing the process, so callers release it first (`releaseFreeMemory`).
enum ResidentMemory {
    /// Resident bytes now, or nil where /proc/self/statm cannot be read.
    static func bytes() -> Int? {
        let descriptor = open("/proc/self/statm", O_RDONLY)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 128) { buffer -> Int? in
            let count = read(descriptor, buffer.baseAddress!, buffer.count)
            guard count > 0 else { return nil }
            // "size resident shared text lib data dt", in pages.
            let fields = buffer[0..<count].split(separator: UInt8(ascii: " "))
            guard fields.count > 1, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return nil }
            return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
        }
    }

    /// Returns freed heap memory to the system, so that the next measurement starts from what
    /// is really in use (glibc keeps freed blocks below its mmap threshold).
    static func releaseFreeMemory() {
        // malloc_trim(0) where the C library has it (glibc; Swift's Glibc module leaves out malloc.h).
        typealias Trim = @convention(c) (Int) -> Int32
        guard let process = dlopen(nil, RTLD_NOW), let symbol = dlsym(process, "malloc_trim") else { return }
        _ = unsafeBitCast(symbol, to: Trim.self)(0)
    }

    /// Bytes by which the resident set grew at its highest while `body` ran, above its size
    /// before; nil where it cannot be read. What `body` returns is released only after the
    /// final sample, so memory a call leaves behind for later (saved activations) counts.
    static func peakGrowth(_ body: () -> AnyObject?) -> Int? {
        guard let before = bytes() else { return nil }
        let sampler = Sampler(start: before)
        sampler.start()
        let kept = body()
        sampler.record()
        let peak = sampler.stop()
        withExtendedLifetime(kept) {}
        return max(0, peak - before)
    }

    /// A thread recording the largest resident size until stopped.
    private final class Sampler: @unchecked Sendable {
        private let lock = NSLock()
        private var peak: Int, running = true
        private let finished = DispatchSemaphore(value: 0)

        init(start: Int) { peak = start }

        func start() {
            let thread = Thread { [self] in
                while lock.withLock({ running }) {
                    record()
                    usleep(1000)
                }
                finished.signal()
            }
            thread.start()
        }

        func record() {
            guard let now = ResidentMemory.bytes() else { return }
            lock.withLock { peak = max(peak, now) }
        }

        func stop() -> Int {
            lock.withLock { running = false }
            finished.wait()
            return lock.withLock { peak }
        }
    }
}
