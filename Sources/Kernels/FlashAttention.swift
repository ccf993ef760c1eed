import Foundation

/// Scaled-dot-product attention by tiles with an online softmax (FlashAttention-2, Dao 2023),
/// for grouped-query heads, causal or not, on the GEMM micro-kernel (`FlashPanels`; BLAS with
/// `kernels.gemm: openblas`).
///
/// Nothing of size Tq × Tk is ever stored: the forward pass keeps O and the per-row logsumexp
/// L = log Σ_j exp(s_ij) (B, Hq, Tq) for the backward pass, which recomputes the probabilities
/// tile by tile as exp(s_ij − L_i). Each thread's workspace is a few tiles (`queryTile ×
/// keyTile` scores and a `queryTile × D` accumulator).
///
/// Layouts: q, o are (B, Tq, Hq, D); k, v are (B, Tk, Hkv, D); Hq is a multiple of Hkv, and
/// query head h reads kv head h / (Hq / Hkv). Scores are s_ij = q_i · k_j / √D.
///
/// Causal masking is by global positions: key j is visible to query i iff
/// keyPositions[j] ≤ queryPositions[i]. By default keys sit at 0..<Tk and queries at the last
/// Tq of them, (Tk − Tq)..<Tk (the bottom-right alignment that prefill and decode with a KV
/// cache need); with Tq > Tk the first Tq − Tk queries then see no key. A row that sees no key
/// gets O = 0, L = −∞ and zero gradients. Tiles no query of which sees any key are skipped;
/// tiles every query of which sees every key skip the mask.
///
/// Results do not depend on the thread count: every tile is computed by the same calls in the
/// same order whichever thread runs it (see `FlashAttention+Backward.swift` for the backward).
public struct FlashAttention {
    public let batch: Int, queryLength: Int, heads: Int, kvHeads: Int, headDim: Int
    public private(set) var keyLength: Int
    public let causal: Bool
    /// Global position of each query (Tq) and key (Tk); used only when `causal`.
    public let queryPositions: [Int]
    public private(set) var keyPositions: [Int]
    /// Rows of queries and columns of keys per tile.
    public let queryTile: Int, keyTile: Int
    /// Whether products run the micro-kernel on operands packed once per call (`FlashPanels`,
    /// when the GEMM is Tessera's) or go through `Matmul.gemm`; the same bits either way
    /// (tests compare the two). nil (the default): bf16 packs, Float32 does not. With Tessera's
    /// GEMM keeping its packing buffers per thread, Float32 panels gained nothing at N = 2048 and
    /// 4096 (`bench attention --mode fwdbwd`, 1 thread: 0.99-1.01x the time) and lost at N = 512
    /// (1.06-1.08x) and in training, where each packed K and V tile serves two query tiles
    /// (bench-dense and bench-moe, T = 256: flash forward + backward 1.20-1.24x the time).
    var packsPanels: Bool? = nil

    /// `packsPanels` resolved for products in `precision`.
    func packsPanels(in precision: ComputePrecision) -> Bool { packsPanels ?? (precision == .bf16) }

    /// Tile sizes: 256 keys per tile amortise the per-tile work of a row (running max,
    /// rescaling the accumulator) and the BLAS call overhead, and 128 query rows amortise the
    /// packing of each K and V tile over more rows. The causal waste stays small because a
    /// diagonal tile runs only its rows from the first that sees any of its keys
    /// (`Visibility.partial`'s `skippedRows`). At D = 64 the working set (scores 128 KiB, K
    /// and V tiles 64 KiB each, Q tile and accumulator 32 KiB each; the backward's two score
    /// tiles 256 KiB) stays within a 1 MiB L2. Measured at N = 4096, one thread: 128 × 256
    /// and 256 × 256 within 1%, 64 × 256 3% slower (`tessera bench attention --query-tile --key-tile`).
    public static let defaultQueryTile = 128, defaultKeyTile = 256

    public init(batch: Int, queryLength: Int, keyLength: Int, heads: Int, kvHeads: Int, headDim: Int,
                causal: Bool = true, queryPositions: [Int]? = nil, keyPositions: [Int]? = nil,
                queryTile: Int = defaultQueryTile, keyTile: Int = defaultKeyTile) {
        precondition(heads > 0 && kvHeads > 0 && heads % kvHeads == 0,
                     "FlashAttention: \(heads) heads do not split into \(kvHeads) kv heads")
        precondition(queryTile > 0 && keyTile > 0, "FlashAttention: tiles must be at least 1 × 1")
        precondition(queryPositions == nil || queryPositions!.count == queryLength,
                     "FlashAttention: \(queryPositions?.count ?? 0) query positions for \(queryLength) queries")
        precondition(keyPositions == nil || keyPositions!.count == keyLength,
                     "FlashAttention: \(keyPositions?.count ?? 0) key positions for \(keyLength) keys")
        self.batch = batch; self.queryLength = queryLength; self.keyLength = keyLength
        self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim; self.causal = causal
        self.queryTile = queryTile; self.keyTile = keyTile
        self.queryPositions = queryPositions ?? Array((keyLength - queryLength)..<keyLength)
        self.keyPositions = keyPositions ?? Array(0..<keyLength)
        queryBounds = Self.bounds(self.queryPositions, tile: queryTile)
        keyBounds = Self.bounds(self.keyPositions, tile: keyTile)
    }

    /// Smallest and largest position in each tile.
    let queryBounds: [(min: Int, max: Int)]
    private(set) var keyBounds: [(min: Int, max: Int)]

    /// The same queries against other keys (`positions`, in the layout's key order), sharing
    /// the query positions and tile bounds instead of storing a copy: ring attention keeps one
    /// kernel per key range of every rank.
    public func withKeys(_ positions: [Int]) -> FlashAttention {
        var other = self
        other.keyLength = positions.count
        other.keyPositions = positions
        other.keyBounds = Self.bounds(positions, tile: keyTile)
        return other
    }

    static func bounds(_ positions: [Int], tile: Int) -> [(min: Int, max: Int)] {
        stride(from: 0, to: positions.count, by: tile).map { start in
            let slice = positions[start..<min(start + tile, positions.count)]
            return (slice.min()!, slice.max()!)
        }
    }

    /// Floats of the logsumexp L (B, Hq, Tq).
    public var logsumexpCount: Int { batch * heads * queryLength }
    var scale: Float { 1 / Float(headDim).squareRoot() }
    var group: Int { heads / kvHeads }
    var queryTiles: Int { queryBounds.count }
    var keyTiles: Int { keyBounds.count }
    func queryRows(_ i: Int) -> Range<Int> { (i * queryTile)..<min((i + 1) * queryTile, queryLength) }
    func keyColumns(_ j: Int) -> Range<Int> { (j * keyTile)..<min((j + 1) * keyTile, keyLength) }

    /// What of key tile j query tile i can see.
    enum Visibility: Equatable {
        /// No query of the tile sees any of its keys.
        case none
        /// Every query sees each of the tile's `columns` keys: no mask.
        case full(columns: Int)
        /// Some pairs among the tile's first `columns` keys are masked; the keys after them are
        /// hidden from every query of the tile and are not computed, and so are the tile's
        /// first `skippedRows` queries, which see none of its keys.
        case partial(columns: Int, skippedRows: Int)
    }

    func visibility(_ i: Int, _ j: Int) -> Visibility {
        let keys = keyColumns(j)
        guard causal else { return .full(columns: keys.count) }
        let (q, k) = (queryBounds[i], keyBounds[j])
        if k.min > q.max { return .none }
        if k.max <= q.min { return .full(columns: keys.count) }
        // Trim the columns no query of the tile sees from the end (all of the upper triangle
        // when positions increase).
        var end = keys.upperBound
        while keyPositions[end - 1] > q.max { end -= 1 }
        // Skip the leading queries that see none of the tile's keys (all queries before the
        // diagonal when positions increase): their rows would be all masked.
        let rows = queryRows(i)
        var first = rows.lowerBound
        while queryPositions[first] < k.min { first += 1 }
        return .partial(columns: end - keys.lowerBound, skippedRows: first - rows.lowerBound)
    }

    /// A permutation of 0..<n that alternates cheap and expensive causal tiles (0, n−1, 1,
    /// n−2, …), so that the contiguous chunks `KernelThreads.forItems` hands out carry similar
    /// work. Only the order of independent items changes, never what an item computes.
    @inline(__always)
    static func interleaved(_ index: Int, _ n: Int) -> Int { index % 2 == 0 ? index / 2 : n - 1 - index / 2 }

    /// o = softmax(q kᵀ / √D, masked) v and L (B, Hq, Tq), the logsumexp of each row's visible
    /// scores (−∞ for a row that sees no key, whose o is 0). With `accumulate`, o and L hold the
    /// result of other keys (a previous call with the same queries) and become the result of
    /// those keys and these together (ring attention merges its key units this way).
    /// `precision` bf16: Q, K, V and P are rounded to bf16 where they enter a product
    /// (`FlashPanels`); scores, softmax statistics, the accumulator and o stay Float32. The
    /// online softmax then runs in base 2 with an integer running maximum (`powersOfTwo`), so
    /// that P's bf16 values do not depend on how the keys are split into tiles and calls;
    /// L = (power + log2 Σ P) · ln 2.
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        o: UnsafeMutablePointer<Float>, logsumexp: UnsafeMutablePointer<Float>,
                        accumulate: Bool = false, threads: KernelThreads = .single, precision: ComputePrecision = .fp32) {
        let tiles = queryTiles
        let packed = ForwardPanels(self, q: q, k: k, v: v, threads: threads, precision: precision)
        defer { packed?.deallocate() }
        threads.forItems(batch * heads * tiles) { items in
            let workspace = Workspace(rows: queryTile, columns: keyTile, headDim: headDim, panels: packed?.panels)
            defer { workspace.deallocate() }
            for item in items {
                let pair = item / tiles
                forwardTile(b: pair / heads, h: pair % heads, i: Self.interleaved(item % tiles, tiles),
                            q: q, k: k, v: v, o: o, logsumexp: logsumexp, accumulate: accumulate, workspace: workspace, packed: packed,
                            precision: precision)
            }
        }
    }

    /// Q (by rows, left operand), K (by keys) and V (by features, right operands) packed once
    /// per forward call for the micro-kernel (`FlashPanels`); nil where flash calls `Matmul.gemm`.
    struct ForwardPanels {
        let panels: FlashPanels, q: FlashPanels.Operand, k: FlashPanels.Operand, v: FlashPanels.Operand

        init?(_ f: FlashAttention, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, threads: KernelThreads,
              precision: ComputePrecision) {
            guard f.packsPanels(in: precision), let panels = FlashPanels.available(headDim: f.headDim, queryTile: f.queryTile, keyTile: f.keyTile,
                                                                    precision: precision) else { return nil }
            let (mr, nr) = (panels.mr, panels.nr)
            self.panels = panels
            self.q = .init(panels, lines: .positions, width: mr, tile: f.queryTile, batch: f.batch, length: f.queryLength, heads: f.heads, headDim: f.headDim)
            self.k = .init(panels, lines: .positions, width: nr, tile: f.keyTile, batch: f.batch, length: f.keyLength, heads: f.kvHeads, headDim: f.headDim)
            self.v = .init(panels, lines: .features, width: nr, tile: f.keyTile, batch: f.batch, length: f.keyLength, heads: f.kvHeads, headDim: f.headDim)
            panels.pack([(q, self.q), (k, self.k), (v, self.v)], batch: f.batch, threads: threads)
        }

        func deallocate() { q.deallocate(); k.deallocate(); v.deallocate() }
    }

    /// One query tile of one head against every key tile it sees.
    /// With `accumulate`, the tile's rows start from the (o, L) already there instead of from
    /// nothing: running max L, running sum 1 and accumulator o (a row with L = −∞ starts
    /// empty), so the result is softmax attention over those earlier keys and these together
    /// — `AttentionMerge` done inside the online softmax, without a partial output buffer.
    private func forwardTile(b: Int, h: Int, i: Int, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                             o: UnsafeMutablePointer<Float>, logsumexp: UnsafeMutablePointer<Float>, accumulate: Bool,
                             workspace w: Workspace, packed: ForwardPanels?, precision: ComputePrecision) {
        let D = headDim, qStride = heads * D, kvStride = kvHeads * D, ld = keyTile
        let rows = queryRows(i), n = rows.count, kvh = h / group
        let qi = q + (b * queryLength + rows.lowerBound) * qStride + h * D
        let kb = k + b * keyLength * kvStride + kvh * D, vb = v + b * keyLength * kvStride + kvh * D
        let (s, acc, rowMax, rowSum) = (w.scores, w.accumulator, w.rowMax, w.rowSum)
        let oi = o + (b * queryLength + rows.lowerBound) * qStride + h * D
        let li = logsumexp + (b * heads + h) * queryLength + rows.lowerBound
        // Accumulating, a tile that sees none of these keys keeps its (o, L) as they are
        // (what the merge below would write back; ring attention's key units skip most tiles).
        if accumulate && causal && keyBounds.allSatisfy({ $0.min > queryBounds[i].max }) { return }
        if accumulate {
            for r in 0..<n {
                rowMax[r] = li[r]
                rowSum[r] = li[r] == -.infinity ? 0 : 1
                (acc + r * D).update(from: oi + r * qStride, count: D)
                // bf16: an integer power ≥ L · log2(e), the sum 2^(L·log2(e) − power) ≤ 1 and o
                // scaled by it (Float32 roundings, like the merge's).
                if precision == .bf16 && li[r] != -.infinity {
                    let t = li[r] * TileMath.log2e
                    rowMax[r] = t.rounded(.up)
                    rowSum[r] = Foundation.exp2(t - rowMax[r])
                    TileMath.scale(acc + r * D, count: D, by: rowSum[r])
                }
            }
        } else {
            acc.update(repeating: 0, count: n * D)
            rowMax.update(repeating: -.infinity, count: n)
            rowSum.update(repeating: 0, count: n)
        }

        for j in 0..<keyTiles {
            let columns: Int, masked: Bool, first: Int
            switch visibility(i, j) {
            case .none: continue
            case .full(let c): (columns, masked, first) = (c, false, 0)
            case .partial(let c, let skipped): (columns, masked, first) = (c, true, skipped)
            }
            let c0 = j * keyTile, m = n - first
            // S (rows first..<n, columns) = scale · Q_i K_jᵀ; the rows before `first` see none of
            // these keys and keep their statistics and accumulator as they are.
            if let packed {
                // From the sliver holding row `first`: the few rows before it are not used.
                let (a, row) = packed.panels.rows(packed.q, b: b, h: h, t: i, from: first)
                packed.panels.product(m: n - row, n: columns, k: D, alpha: scale, a: a, b: packed.panels.panel(packed.k, b: b, h: kvh, t: j),
                                      c: s + row * ld, ldc: ld)
            } else {
                Matmul.gemm(transposeA: false, transposeB: true, m: m, n: columns, k: D, alpha: scale,
                            a: qi + first * qStride, lda: qStride, b: kb + c0 * kvStride, ldb: kvStride, c: s + first * ld, ldc: ld,
                            precision: precision)
            }
            if masked { mask(s + first * ld, ld: ld, rows: (rows.lowerBound + first)..<rows.upperBound, columns: c0..<(c0 + columns)) }
            for r in first..<n {
                let row = s + r * ld, tileMax = TileMath.maximum(row, count: columns)
                if precision == .bf16 {
                    Self.powersOfTwo(row, count: columns, max: tileMax, power: &rowMax[r], sum: &rowSum[r], accumulator: acc + r * D, headDim: D)
                } else {
                    let newMax = max(rowMax[r], tileMax)
                    if newMax == -.infinity {   // nothing visible to this row yet: it adds nothing
                        row.update(repeating: 0, count: columns)
                    } else {
                        let sum = TileMath.exponentiate(row, count: columns, minus: newMax)
                        let rescale = rowMax[r] == -.infinity ? 0 : Foundation.exp(rowMax[r] - newMax)
                        if rescale != 1 { TileMath.scale(acc + r * D, count: D, by: rescale) }
                        rowSum[r] = rowSum[r] * rescale + sum
                        rowMax[r] = newMax
                    }
                }
                // bf16: P's row rounded straight into the packed left operand of P V.
                if let packed, let madeP = w.madeP { packed.panels.putLine(row, depth: columns, into: madeP, line: r - first) }
            }
            // acc (n, D) += P (n, columns) · V_j
            if let packed {
                let a = w.madeP.map { packed.panels.made($0, depth: columns) }
                    ?? packed.panels.packLeft(transposed: false, m: m, k: columns, a: s + first * ld, lda: ld)
                packed.panels.product(m: m, n: D, k: columns, a: a, b: packed.panels.panel(packed.v, b: b, h: kvh, t: j),
                                      beta: 1, c: acc + first * D, ldc: D)
            } else {
                Matmul.gemm(transposeA: false, transposeB: false, m: m, n: D, k: columns,
                            a: s + first * ld, lda: ld, b: vb + c0 * kvStride, ldb: kvStride, beta: 1, c: acc + first * D, ldc: D,
                            precision: precision)
            }
        }

        for r in 0..<n {
            let out = oi + r * qStride
            if rowSum[r] == 0 {
                out.update(repeating: 0, count: D)
                li[r] = -.infinity
            } else {
                let inverse = 1 / rowSum[r]
                for d in 0..<D { out[d] = acc[r * D + d] * inverse }
                li[r] = precision == .bf16 ? (rowMax[r] + Foundation.log2(rowSum[r])) * TileMath.ln2
                    : rowMax[r] + Foundation.log(rowSum[r])
            }
        }
    }

    /// The bf16 online softmax of one row of a score tile (`max` its maximum), in base 2 with
    /// an integer running maximum: `power` (−∞ before any visible key) becomes an integer ≥
    /// max · log2(e) and every earlier one, the row becomes P = 2^(s · log2(e) − power)
    /// (`TileMath.exponentiateInPowersOfTwo`: P's bf16 rounding does not depend on `power`), and
    /// `sum` and the accumulator are rescaled by 2^(old power − power), exactly. So the bf16
    /// products P V of a row are the same, up to exact powers of two, however its keys are
    /// split into tiles and calls (ring attention's chunks), and layouts differ only by Float32
    /// roundings of sums.
    @inline(__always)
    static func powersOfTwo(_ row: UnsafeMutablePointer<Float>, count: Int, max tileMax: Float, power: inout Float, sum: inout Float,
                            accumulator: UnsafeMutablePointer<Float>, headDim: Int) {
        let newPower = tileMax == -.infinity ? power : Swift.max(power, (tileMax * TileMath.log2e).rounded(.up))
        guard newPower > -.infinity else {   // nothing visible to this row yet: it adds nothing
            row.update(repeating: 0, count: count)
            return
        }
        let tileSum = TileMath.exponentiateInPowersOfTwo(row, count: count, minus: newPower)
        if newPower != power {
            let rescale = power == -.infinity ? 0 : Float(sign: .plus, exponent: Int(power - newPower), significand: 1)
            TileMath.scale(accumulator, count: headDim, by: rescale)
            sum *= rescale
        }
        sum += tileSum
        power = newPower
    }

    /// Sets the scores of masked pairs (key position after the query position) to −∞. Where
    /// the tile's key positions ascend (contiguous and zigzag shards, ring units), a row's
    /// masked keys are a suffix, found by bisection and filled; keys in any other order are
    /// compared pair by pair.
    func mask(_ s: UnsafeMutablePointer<Float>, ld: Int, rows: Range<Int>, columns: Range<Int>) {
        let ascending = keysAscend(columns)
        for (r, i) in rows.enumerated() {
            let position = queryPositions[i], row = s + r * ld
            if ascending {
                var (low, high) = (columns.lowerBound, columns.upperBound)   // first key after `position`
                while low < high {
                    let middle = (low + high) / 2
                    if keyPositions[middle] > position { high = middle } else { low = middle + 1 }
                }
                (row + (low - columns.lowerBound)).update(repeating: -.infinity, count: columns.upperBound - low)
            } else {
                for (c, j) in columns.enumerated() where keyPositions[j] > position { row[c] = -.infinity }
            }
        }
    }

    /// Whether the key positions of `columns` strictly ascend.
    func keysAscend(_ columns: Range<Int>) -> Bool {
        var j = columns.lowerBound + 1
        while j < columns.upperBound, keyPositions[j - 1] < keyPositions[j] { j += 1 }
        return j >= columns.upperBound
    }

    /// Per-thread scratch: a score tile, an output accumulator and two row statistics; with
    /// bf16 panels, P as the packed left operand of P V.
    struct Workspace {
        let scores: UnsafeMutablePointer<Float>, accumulator: UnsafeMutablePointer<Float>
        let rowMax: UnsafeMutablePointer<Float>, rowSum: UnsafeMutablePointer<Float>
        let madeP: UnsafeMutableRawPointer?

        init(rows: Int, columns: Int, headDim: Int, panels: FlashPanels?) {
            scores = .allocate(capacity: rows * columns)
            accumulator = .allocate(capacity: max(rows * headDim, 1))
            rowMax = .allocate(capacity: rows)
            rowSum = .allocate(capacity: rows)
            madeP = panels?.isBF16 == true ? panels!.madeBuffer(lines: rows, depth: columns) : nil
        }

        func deallocate() { scores.deallocate(); accumulator.deallocate(); rowMax.deallocate(); rowSum.deallocate(); madeP?.deallocate() }
    }
}
