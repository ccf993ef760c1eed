import CBF16
import CGemm
import Foundation

/// Flash attention's operands packed once per call into the slivers a micro-kernel reads, so
/// that the tile products run the kernel on them directly: Q, K, V and dO once per call (through
/// `Matmul.gemm` K_j and V_j were packed again for every query tile, 11% of a flash step). The
/// tiles made inside a tile pair (P, dS and their transposes) are, in bf16, rounded and written
/// in the packed layout by the elementwise pass that makes them (`putLine`, `putDepths`); in
/// Float32 they are still stored row-major and packed per product (`packLeft`: a per-row scatter
/// into the Float32 layout measured slower than the packing's 4 × 4 transposes).
///
/// Float32 (`fp32`): Tessera's GEMM kernel, when it is the process's GEMM and every depth fits
/// one KC block (head dim and both tiles ≤ `TesseraGemm.kc`), and only when a caller asks for it
/// (`FlashAttention.packsPanels = true`: by default Float32 flash calls `Matmul.gemm`, whose
/// per-thread packing measured as fast at N = 2048, 4096 and faster in training); with OpenBLAS
/// (`kernels.gemm: openblas`) or larger depths flash calls `Matmul.gemm`. Each product then makes the
/// calls `TesseraGemm.gemm` makes for it — the same kernel on the same packed values, one chain
/// from zero over the whole depth, then `alpha · sum + beta · C` — so the bits are those of
/// `Matmul.gemm`, for any thread count.
///
/// bf16 (`train.precision: bf16`): the bf16 GEMM's micro-kernel (`vdpbf16ps`, or its exact
/// emulation), operands rounded to bf16 as they are packed, k in pairs; depths up to 512, else
/// `BF16Matmul.gemm`. A depth offset into a packed operand must be even (a whole pair).
struct FlashPanels {
    /// The Float32 micro-kernel; nil when the products run on the bf16 one.
    let kernel: TesseraGemm.Kernel?
    /// The bf16 kernel's code for `tessera_bf16_kernel`.
    let bf16Code: Int32
    let mr: Int, nr: Int
    var isBF16: Bool { kernel == nil }
    /// Bytes of one packed value.
    var elementSize: Int { isBF16 ? 2 : 4 }
    /// AVX-512 rounding (same bits as scalar).
    static let wide: Int32 = CPUInfo.current.features.contains(.avx512) ? 1 : 0

    /// The kernel flash attention of `headDim` with these tiles runs in `precision` when it can
    /// use packed panels, else nil.
    static func available(headDim: Int, queryTile: Int, keyTile: Int, precision: ComputePrecision = .fp32) -> FlashPanels? {
        let depth = max(headDim, queryTile, keyTile)
        switch precision {
        case .fp32:
            guard Matmul.implementation == .tessera, depth <= TesseraGemm.kc,
                  let kernel = TesseraGemm.kernels[TesseraGemm.isa] else { return nil }
            return FlashPanels(kernel: kernel, bf16Code: 0, mr: kernel.mr, nr: kernel.nr)
        case .bf16:
            guard depth <= Int(TESSERA_BF16_MAX_DEPTH) else { return nil }
            return FlashPanels(kernel: nil, bf16Code: BF16Kernel.best.code, mr: Int(TESSERA_BF16_MR), nr: Int(TESSERA_BF16_NR))
        }
    }

    /// What the lines of a packed tile are: its positions (depth: the head dim; Q as the left
    /// operand of Q Kᵀ, K as the right one) or its features (depth: the positions; V in P V).
    enum Lines { case positions, features }

    /// Values of a depth as packed: bf16 pads an odd depth to a whole pair.
    func padded(_ depth: Int) -> Int { isBF16 ? (depth + 1) / 2 * 2 : depth }

    /// A tensor (B, T, H, D) packed per (batch, head, tile of `tile` positions) in slivers of
    /// `width` lines (the kernel's mr for a left operand, nr for a right one).
    struct Operand {
        let base: UnsafeMutableRawPointer
        let panels: FlashPanels
        let lines: Lines, width: Int, tile: Int, length: Int, heads: Int, headDim: Int, tiles: Int
        /// Values of one packed tile.
        let tileValues: Int

        init(_ panels: FlashPanels, lines: Lines, width: Int, tile: Int, batch: Int, length: Int, heads: Int, headDim: Int) {
            self.panels = panels; self.lines = lines; self.width = width; self.tile = tile
            self.length = length; self.heads = heads; self.headDim = headDim
            tiles = (length + tile - 1) / tile
            let round = { (x: Int) in (x + width - 1) / width * width }
            tileValues = lines == .positions ? round(tile) * panels.padded(headDim) : round(headDim) * panels.padded(tile)
            base = FlashPanels.storage.take(max(batch * heads * tiles * tileValues * panels.elementSize, 4))
        }

        /// Packs tile `t` of head `h` of batch `b` from `source` (B, T, H, D).
        func pack(_ source: UnsafePointer<Float>, b: Int, h: Int, t: Int) {
            let count = min(tile, length - t * tile)
            let start = source + ((b * length + t * tile) * heads + h) * headDim, to = first(b: b, h: h, t: t)
            let (lineCount, depth, contiguous) = lines == .positions ? (count, headDim, 0) : (headDim, count, 1)
            if panels.isBF16 {
                tessera_bf16_pack(Int32(contiguous), lineCount, depth, start, heads * headDim, Int32(width),
                                  to.assumingMemoryBound(to: UInt16.self), FlashPanels.wide)
            } else {
                panels.kernel!.pack(1 - Int32(contiguous), lineCount, depth, start, heads * headDim, width, to.assumingMemoryBound(to: Float.self))
            }
        }

        /// Where tile `t` of head `h` of batch `b` starts.
        func first(b: Int, h: Int, t: Int) -> UnsafeMutableRawPointer { base + ((b * heads + h) * tiles + t) * tileValues * panels.elementSize }

        /// Values between two slivers of tile `t` (the depth is the head dim, or the tile's positions).
        func sliver(_ t: Int) -> Int { width * panels.padded(lines == .positions ? headDim : min(tile, length - t * tile)) }

        func deallocate() { FlashPanels.storage.give(base) }
    }

    /// Packed operands' memory, kept between calls: fresh pages for every call (tens of MiB at
    /// N = 4096) cost more in page faults than the packing saves at N ≤ 1024.
    static let storage = Storage()

    final class Storage: @unchecked Sendable {
        private let lock = NSLock()
        private var free: [(pointer: UnsafeMutableRawPointer, bytes: Int)] = []
        private var sizes: [UnsafeMutableRawPointer: Int] = [:]

        /// A 64-byte aligned buffer of at least `bytes`: a free one that fits, else a new one.
        func take(_ bytes: Int) -> UnsafeMutableRawPointer {
            lock.lock(); defer { lock.unlock() }
            if let index = free.firstIndex(where: { $0.bytes >= bytes }) { return free.remove(at: index).pointer }
            if let index = free.indices.max(by: { free[$0].bytes < free[$1].bytes }) {   // grow the largest
                sizes[free[index].pointer] = nil
                free.remove(at: index).pointer.deallocate()
            }
            let pointer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            sizes[pointer] = bytes
            return pointer
        }

        func give(_ pointer: UnsafeMutableRawPointer) {
            lock.lock(); defer { lock.unlock() }
            free.append((pointer, sizes[pointer]!))
        }
    }

    /// One operand per (source tensor, format), packed on `threads` (tiles in parallel). Operands
    /// listed one after another from the same tensor, over the same heads and tiles, are packed
    /// tile by tile together: the later ones read the tile from cache, not from memory.
    func pack(_ sources: [(tensor: UnsafePointer<Float>, operand: Operand)], batch: Int, threads: KernelThreads) {
        var groups: [Range<Int>] = []
        for s in sources.indices {
            if let last = groups.last, sources[last.lowerBound].tensor == sources[s].tensor,
               sources[last.lowerBound].operand.heads == sources[s].operand.heads,
               sources[last.lowerBound].operand.tiles == sources[s].operand.tiles {
                groups[groups.count - 1] = last.lowerBound..<(s + 1)
            } else {
                groups.append(s..<(s + 1))
            }
        }
        let perGroup = groups.map { batch * sources[$0.lowerBound].operand.heads * sources[$0.lowerBound].operand.tiles }
        threads.forItems(perGroup.reduce(0, +)) { items in
            for item in items {
                var (g, rest) = (0, item)
                while rest >= perGroup[g] { rest -= perGroup[g]; g += 1 }
                for s in groups[g] {
                    let operand = sources[s].operand, perBatch = operand.heads * operand.tiles
                    operand.pack(sources[s].tensor, b: rest / perBatch, h: rest % perBatch / operand.tiles, t: rest % operand.tiles)
                }
            }
        }
    }

    /// A left operand (lines: rows of C, `mr` wide) or a right one (lines: columns, `nr`):
    /// slivers `sliver` values apart, already advanced to the first depth used.
    struct Panel {
        let pointer: UnsafeRawPointer, sliver: Int
    }

    /// The panel of tile `t` from depth `depth` on (even in bf16).
    func panel(_ operand: Operand, b: Int, h: Int, t: Int, depth: Int = 0) -> Panel {
        precondition(!isBF16 || depth % 2 == 0, "FlashPanels: bf16 depth offset \(depth) splits a pair")
        return Panel(pointer: operand.first(b: b, h: h, t: t) + depth * operand.width * elementSize, sliver: operand.sliver(t))
    }

    /// The left operand op(A) (m, k) of a Float32 tile made in place (P, dS; Pᵀ, dSᵀ when
    /// `transposed`), packed now into this thread's buffer.
    func packLeft(transposed: Bool, m: Int, k: Int, a: UnsafePointer<Float>, lda: Int) -> Panel {
        let packed = PackBuffers.current.a.reserve((m + mr - 1) / mr * mr * k)
        kernel!.pack(transposed ? 0 : 1, m, k, a, lda, mr, packed)
        return Panel(pointer: packed, sliver: mr * k)
    }

    /// bf16 scratch for one left operand made in place of up to `lines` lines over `depth`:
    /// zeroed once, so the lines past a product's rows in the last sliver are finite values.
    func madeBuffer(lines: Int, depth: Int) -> UnsafeMutableRawPointer {
        let bytes = (lines + mr - 1) / mr * mr * (depth + 1) * 2
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        return buffer
    }

    /// The left operand made in `buffer` (`putLine`, `putDepths`) over `depth`.
    func made(_ buffer: UnsafeMutableRawPointer, depth: Int) -> Panel { Panel(pointer: buffer, sliver: mr * padded(depth)) }

    /// Line `line` of a bf16 left operand in `buffer` from its `depth` values x, rounded; nil: zeros.
    func putLine(_ x: UnsafePointer<Float>?, depth: Int, into buffer: UnsafeMutableRawPointer, line: Int) {
        let sliver = buffer + line / mr * mr * padded(depth) * elementSize
        tessera_bf16_put_line(x, depth, sliver.assumingMemoryBound(to: UInt16.self), Int32(mr), Int32(line % mr), Self.wide)
    }

    /// Depths `depth` (even) and `depth` + 1 of a bf16 left operand in `buffer` of `lines` lines
    /// over `count` depths, from x0 and x1 (one value per line, rounded; nil: zeros).
    func putDepths(_ x0: UnsafePointer<Float>?, _ x1: UnsafePointer<Float>?, lines: Int, into buffer: UnsafeMutableRawPointer,
                   depth: Int, count: Int) {
        tessera_bf16_put_depth_pair(x0, x1, lines, buffer.assumingMemoryBound(to: UInt16.self), mr * padded(count), Int32(mr), depth, Self.wide)
    }

    /// C (m, n) = alpha · A B + beta · C over depth k (beta 0 does not read C), from panels of
    /// at least m rows (A) and n columns (B); the kernel stores only C's m × n.
    func product(m: Int, n: Int, k: Int, alpha: Float = 1, a: Panel, b: Panel, beta: Float = 0,
                 c: UnsafeMutablePointer<Float>, ldc: Int) {
        for jr in stride(from: 0, to: n, by: nr) {
            let bSliver = b.pointer + jr / nr * b.sliver * elementSize, columns = min(nr, n - jr)
            for ir in stride(from: 0, to: m, by: mr) {
                let aSliver = a.pointer + ir / mr * a.sliver * elementSize, rows = min(mr, m - ir)
                if let kernel {
                    kernel.function(k, aSliver.assumingMemoryBound(to: Float.self), bSliver.assumingMemoryBound(to: Float.self),
                                    c + ir * ldc + jr, ldc, rows, columns, alpha, beta)
                } else {
                    tessera_bf16_kernel(bf16Code, (k + 1) / 2, aSliver.assumingMemoryBound(to: UInt16.self),
                                        bSliver.assumingMemoryBound(to: UInt16.self), c + ir * ldc + jr, ldc,
                                        Int32(rows), Int32(columns), alpha, beta)
                }
            }
        }
    }

    /// The panel of a left operand packed by positions (Q, dO) from row `first` of tile `t`
    /// rounded down to a whole sliver, and that row: products from it compute up to mr − 1
    /// rows before `first` too (rows no key of the tile is visible to, which callers ignore).
    func rows(_ operand: Operand, b: Int, h: Int, t: Int, from first: Int) -> (panel: Panel, row: Int) {
        let row = first / mr * mr
        let tile = operand.first(b: b, h: h, t: t) + row / mr * operand.sliver(t) * elementSize
        return (Panel(pointer: tile, sliver: operand.sliver(t)), row)
    }
}
