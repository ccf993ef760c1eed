import CGemm
import Foundation

/// Flash attention's operands packed once per call into the slivers `TesseraGemm`'s micro-kernel
/// reads, so that the tile products run the kernel on them directly: through `Matmul.gemm`
/// every product packed its Q, K, V or dO tile again (K_j and V_j once per query tile, 11% of
/// a flash step). Only the operands made inside a tile (P, dS and their transposes) are still
/// packed per product.
///
/// Used when the process's GEMM is Tessera's and every depth fits one KC block (head dim and
/// both tiles ≤ `TesseraGemm.kc`); with OpenBLAS (`kernels.gemm: openblas`) or larger depths
/// flash keeps calling `Matmul.gemm`. Each product then makes the calls `TesseraGemm.gemm`
/// makes for it — the same kernel on the same packed values, one chain from zero over the
/// whole depth, then `alpha · sum + beta · C` — so the bits are those of `Matmul.gemm`, for
/// any thread count.
struct FlashPanels {
    let kernel: TesseraGemm.Kernel

    /// The kernel of this process when flash attention of `headDim` with these tiles can use
    /// packed panels, else nil.
    static func available(headDim: Int, queryTile: Int, keyTile: Int) -> FlashPanels? {
        guard Matmul.implementation == .tessera, max(headDim, queryTile, keyTile) <= TesseraGemm.kc,
              let kernel = TesseraGemm.kernels[TesseraGemm.isa] else { return nil }
        return FlashPanels(kernel: kernel)
    }

    /// What the lines of a packed tile are: its positions (depth: the head dim; Q as the left
    /// operand of Q Kᵀ, K as the right one) or its features (depth: the positions; V in P V).
    enum Lines { case positions, features }

    /// A tensor (B, T, H, D) packed per (batch, head, tile of `tile` positions) in slivers of
    /// `width` lines (the kernel's mr for a left operand, nr for a right one).
    struct Operand {
        let base: UnsafeMutablePointer<Float>
        let lines: Lines, width: Int, tile: Int, length: Int, heads: Int, headDim: Int, tiles: Int
        let tileFloats: Int

        init(lines: Lines, width: Int, tile: Int, batch: Int, length: Int, heads: Int, headDim: Int) {
            self.lines = lines; self.width = width; self.tile = tile
            self.length = length; self.heads = heads; self.headDim = headDim
            tiles = (length + tile - 1) / tile
            let round = { (x: Int) in (x + width - 1) / width * width }
            tileFloats = lines == .positions ? round(tile) * headDim : round(headDim) * tile
            base = FlashPanels.storage.take(max(batch * heads * tiles * tileFloats, 1))
        }

        /// Packs tile `t` of head `h` of batch `b` from `source` (B, T, H, D).
        func pack(_ source: UnsafePointer<Float>, b: Int, h: Int, t: Int) {
            let count = min(tile, length - t * tile)
            let start = source + ((b * length + t * tile) * heads + h) * headDim
            switch lines {
            case .positions: tessera_gemm_pack(1, count, headDim, start, heads * headDim, width, first(b: b, h: h, t: t))
            case .features: tessera_gemm_pack(0, headDim, count, start, heads * headDim, width, first(b: b, h: h, t: t))
            }
        }

        /// Where tile `t` of head `h` of batch `b` starts.
        func first(b: Int, h: Int, t: Int) -> UnsafeMutablePointer<Float> { base + ((b * heads + h) * tiles + t) * tileFloats }

        /// Floats between two slivers of tile `t` (the depth is the head dim, or the tile's positions).
        func sliver(_ t: Int) -> Int { width * (lines == .positions ? headDim : min(tile, length - t * tile)) }

        func deallocate() { FlashPanels.storage.give(base) }
    }

    /// Packed operands' memory, kept between calls: fresh pages for every call (tens of MiB at
    /// N = 4096) cost more in page faults than the packing saves at N ≤ 1024.
    static let storage = Storage()

    final class Storage: @unchecked Sendable {
        private let lock = NSLock()
        private var free: [(pointer: UnsafeMutablePointer<Float>, capacity: Int)] = []
        private var capacities: [UnsafeMutablePointer<Float>: Int] = [:]

        /// A 64-byte aligned buffer of at least `count` floats: a free one that fits, else a new one.
        func take(_ count: Int) -> UnsafeMutablePointer<Float> {
            lock.lock(); defer { lock.unlock() }
            if let index = free.firstIndex(where: { $0.capacity >= count }) { return free.remove(at: index).pointer }
            if let index = free.indices.max(by: { free[$0].capacity < free[$1].capacity }) {   // grow the largest
                capacities[free[index].pointer] = nil
                free.remove(at: index).pointer.deallocate()
            }
            let pointer = UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64).bindMemory(to: Float.self, capacity: count)
            capacities[pointer] = count
            return pointer
        }

        func give(_ pointer: UnsafeMutablePointer<Float>) {
            lock.lock(); defer { lock.unlock() }
            free.append((pointer, capacities[pointer]!))
        }
    }

    /// One operand per (source tensor, format), packed on `threads` (tiles in parallel).
    func pack(_ sources: [(tensor: UnsafePointer<Float>, operand: Operand)], batch: Int, threads: KernelThreads) {
        let perOperand = sources.map { batch * $0.operand.heads * $0.operand.tiles }
        let total = perOperand.reduce(0, +)
        threads.forItems(total) { items in
            for item in items {
                var (s, rest) = (0, item)
                while rest >= perOperand[s] { rest -= perOperand[s]; s += 1 }
                let operand = sources[s].operand, perBatch = operand.heads * operand.tiles
                operand.pack(sources[s].tensor, b: rest / perBatch, h: rest % perBatch / operand.tiles, t: rest % operand.tiles)
            }
        }
    }

    /// A left operand (lines: rows of C, `mr` wide) or a right one (lines: columns, `nr`):
    /// slivers `sliver` floats apart, already advanced to the first depth used.
    struct Panel {
        let pointer: UnsafePointer<Float>, sliver: Int
    }

    /// The panel of tile `t` from depth `depth` on.
    func panel(_ operand: Operand, b: Int, h: Int, t: Int, depth: Int = 0) -> Panel {
        Panel(pointer: operand.first(b: b, h: h, t: t) + depth * operand.width, sliver: operand.sliver(t))
    }

    /// The left operand op(A) (m, k) of a tile made in place (P, dS; Pᵀ, dSᵀ when `transposed`),
    /// packed now into this thread's buffer.
    func packLeft(transposed: Bool, m: Int, k: Int, a: UnsafePointer<Float>, lda: Int) -> Panel {
        let packed = PackBuffers.current.a.reserve((m + kernel.mr - 1) / kernel.mr * kernel.mr * k)
        tessera_gemm_pack(transposed ? 0 : 1, m, k, a, lda, kernel.mr, packed)
        return Panel(pointer: packed, sliver: kernel.mr * k)
    }

    /// C (m, n) = alpha · A B + beta · C over depth k (beta 0 does not read C), from panels of
    /// at least m rows (A) and n columns (B); the kernel stores only C's m × n.
    func product(m: Int, n: Int, k: Int, alpha: Float = 1, a: Panel, b: Panel, beta: Float = 0,
                 c: UnsafeMutablePointer<Float>, ldc: Int) {
        let (mr, nr) = (kernel.mr, kernel.nr)
        for jr in stride(from: 0, to: n, by: nr) {
            let bSliver = b.pointer + jr / nr * b.sliver, columns = min(nr, n - jr)
            for ir in stride(from: 0, to: m, by: mr) {
                kernel.function(k, a.pointer + ir / mr * a.sliver, bSliver, c + ir * ldc + jr, ldc, min(mr, m - ir), columns, alpha, beta)
            }
        }
    }

    /// The panel of a left operand packed by positions (Q, dO) from row `first` of tile `t`
    /// rounded down to a whole sliver, and that row: products from it compute up to mr − 1
    /// rows before `first` too (rows no key of the tile is visible to, which callers ignore).
    func rows(_ operand: Operand, b: Int, h: Int, t: Int, from first: Int) -> (panel: Panel, row: Int) {
        let row = first / kernel.mr * kernel.mr
        let tile = operand.first(b: b, h: h, t: t) + row / kernel.mr * operand.sliver(t)
        return (Panel(pointer: tile, sliver: operand.sliver(t)), row)
    }
}
