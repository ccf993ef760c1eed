import Foundation

// The backward pass of `FlashAttention`: probabilities recomputed tile by tile from L.
//
// For a query tile i and key tile j:  S = scale · Q_i K_jᵀ,  P = exp(S − L_i),  dP = dO_i V_jᵀ,
// dS = P ⊙ (dP − D_i) with D_i = rowsum(dO_i ⊙ O_i);  then  dV_j += Pᵀ dO_i,
// dK_j += scale · dSᵀ Q_i,  dQ_i += scale · dS K_j.
//
// dK_j and dV_j collect every query tile of every query head of their group, dQ_i every key
// tile, so no split of the work lets each thread own all three. Two schedules, each owning
// what it writes:
// - fused: one work item per (batch, kv head) runs key tiles j in order, and inside each j
//   every (query head of the group, query tile i). Five products per tile pair, but only
//   B · Hkv items.
// - split: items (batch, kv head, key tile) accumulate dK_j and dV_j; then items (batch, query
//   head, query tile) accumulate dQ_i over key tiles j in order. Seven products per tile pair
//   (S and dP are computed twice), with many more items.
// Both run every tile pair through the same calls and accumulate dQ_i in j order and dK_j, dV_j
// in (head, i) order, so they give the same bits; the schedule is chosen from the thread count
// for speed alone, and results do not depend on it.

extension FlashAttention {
    /// Gradients dq (B, Tq, Hq, D), dk, dv (B, Tk, Hkv, D) (all overwritten) from dO, with the
    /// o and logsumexp of `forward`. `precision` bf16: Q, K, V, dO, P and dS are rounded to bf16
    /// where they enter a product; D = rowsum(dO ⊙ O), the statistics and the gradients'
    /// accumulation stay Float32.
    public func backward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                         o: UnsafePointer<Float>, logsumexp: UnsafePointer<Float>, dO: UnsafePointer<Float>,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         threads: KernelThreads = .single, precision: ComputePrecision = .fp32) {
        let rowDot = UnsafeMutablePointer<Float>.allocate(capacity: max(logsumexpCount, 1))
        defer { rowDot.deallocate() }
        Self.rowDot(o: o, dO: dO, into: rowDot, batch: batch, length: queryLength, heads: heads, headDim: headDim, threads: threads)
        backward(q: q, k: k, v: v, logsumexp: logsumexp, rowDot: rowDot, dO: dO, dq: dq, dk: dk, dv: dv, threads: threads,
                 precision: precision)
    }

    /// The backward pass with the row statistics given: `logsumexp` L and `rowDot` D, both
    /// (B, Hq, Tq). With the global L of every key and D = rowsum(dO ⊙ O) of the global output,
    /// this is one key chunk's share of the gradient (ring attention): dq sums over chunks,
    /// dk and dv are the chunk's own. `accumulate`: add to dq, dk and dv instead of overwriting
    /// them (ring attention sums its chunks' shares in place, with no extra buffers).
    public func backward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                         logsumexp: UnsafePointer<Float>, rowDot: UnsafePointer<Float>, dO: UnsafePointer<Float>,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         accumulate: Bool = false, threads: KernelThreads = .single, precision: ComputePrecision = .fp32) {
        if !accumulate {
            dq.update(repeating: 0, count: batch * queryLength * heads * headDim)
            dk.update(repeating: 0, count: batch * keyLength * kvHeads * headDim)
            dv.update(repeating: 0, count: batch * keyLength * kvHeads * headDim)
        }
        let packed = BackwardPanels(self, q: q, k: k, v: v, dO: dO, threads: threads, precision: precision)
        defer { packed?.deallocate() }
        let tensors = Tensors(q: q, k: k, v: v, logsumexp: logsumexp, rowDot: rowDot, dO: dO, dq: dq, dk: dk, dv: dv, packed: packed,
                              precision: precision)
        let groups = batch * kvHeads
        if Self.fusedIsFaster(items: groups, threads: threads.count) {
            threads.forItems(groups) { items in
                let workspace = BackwardWorkspace(rows: queryTile, columns: keyTile, panels: packed?.panels)
                defer { workspace.deallocate() }
                for item in items {
                    for j in 0..<keyTiles { keyTileGradients(b: item / kvHeads, kvh: item % kvHeads, j: j, withQuery: true, tensors, workspace) }
                }
            }
        } else {
            let kTiles = keyTiles, qTiles = queryTiles
            threads.forItems(groups * kTiles) { items in
                let workspace = BackwardWorkspace(rows: queryTile, columns: keyTile, panels: packed?.panels)
                defer { workspace.deallocate() }
                for item in items {
                    let pair = item / kTiles
                    keyTileGradients(b: pair / kvHeads, kvh: pair % kvHeads, j: Self.interleaved(item % kTiles, kTiles),
                                     withQuery: false, tensors, workspace)
                }
            }
            threads.forItems(batch * heads * qTiles) { items in
                let workspace = BackwardWorkspace(rows: queryTile, columns: keyTile, panels: packed?.panels)
                defer { workspace.deallocate() }
                for item in items {
                    let pair = item / qTiles, i = Self.interleaved(item % qTiles, qTiles)
                    for j in 0..<kTiles {
                        tilePair(b: pair / heads, h: pair % heads, i: i, j: j, tensors, workspace, keys: false, query: true)
                    }
                }
            }
        }
    }

    /// The fused schedule when its B · Hkv items keep the threads about as busy as the split
    /// one's many items would, counting 5 products per tile pair against 7.
    static func fusedIsFaster(items: Int, threads: Int) -> Bool {
        threads <= 1 || 5 * ((items + threads - 1) / threads) * threads <= 7 * items
    }

    /// D (B, Hq, T) = Σ_d dO ⊙ O over each row of o, dO (B, T, Hq, D).
    public static func rowDot(o: UnsafePointer<Float>, dO: UnsafePointer<Float>, into rowDot: UnsafeMutablePointer<Float>,
                              batch: Int, length: Int, heads: Int, headDim: Int, threads: KernelThreads = .single) {
        threads.forRanges(batch * heads * length, minimumChunk: 4096) { rows in
            for row in rows {
                let t = row % length, bh = row / length, b = bh / heads, h = bh % heads
                let offset = ((b * length + t) * heads + h) * headDim
                rowDot[row] = VectorMath.dot(o + offset, dO + offset, count: headDim)
            }
        }
    }

    /// Pointers of one backward call.
    struct Tensors {
        let q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>
        let logsumexp: UnsafePointer<Float>, rowDot: UnsafePointer<Float>, dO: UnsafePointer<Float>
        let dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>
        let packed: BackwardPanels?
        let precision: ComputePrecision
    }

    /// The inputs packed once per backward call for the micro-kernel (`FlashPanels`): Q and dO
    /// by rows (left operands of S and dP), K and V by keys (their right operands), and Q, dO
    /// and K by features (right operands of dK, dV and dQ). Nil where flash calls `Matmul.gemm`.
    struct BackwardPanels {
        typealias Operand = FlashPanels.Operand
        let panels: FlashPanels
        let q: Operand, dO: Operand, k: Operand, v: Operand, qFeatures: Operand, dOFeatures: Operand, kFeatures: Operand

        init?(_ f: FlashAttention, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
              dO: UnsafePointer<Float>, threads: KernelThreads, precision: ComputePrecision) {
            guard f.packsPanels(in: precision), let panels = FlashPanels.available(headDim: f.headDim, queryTile: f.queryTile, keyTile: f.keyTile,
                                                                    precision: precision) else { return nil }
            let (mr, nr) = (panels.mr, panels.nr)
            func queries(_ lines: FlashPanels.Lines, _ width: Int) -> Operand {
                Operand(panels, lines: lines, width: width, tile: f.queryTile, batch: f.batch, length: f.queryLength, heads: f.heads, headDim: f.headDim)
            }
            func keys(_ lines: FlashPanels.Lines) -> Operand {
                Operand(panels, lines: lines, width: nr, tile: f.keyTile, batch: f.batch, length: f.keyLength, heads: f.kvHeads, headDim: f.headDim)
            }
            self.panels = panels
            (self.q, self.dO, self.qFeatures, self.dOFeatures) = (queries(.positions, mr), queries(.positions, mr), queries(.features, nr), queries(.features, nr))
            (self.k, self.v, self.kFeatures) = (keys(.positions), keys(.positions), keys(.features))
            panels.pack([(q, self.q), (q, qFeatures), (dO, self.dO), (dO, dOFeatures), (k, self.k), (k, kFeatures), (v, self.v)],
                        batch: f.batch, threads: threads)
        }

        func deallocate() { for operand in [q, dO, k, v, qFeatures, dOFeatures, kFeatures] { operand.deallocate() } }
    }

    /// dK_j and dV_j of one kv head from every query head of its group and every query tile
    /// (in that order), and, `withQuery`, those pairs' shares of dQ.
    private func keyTileGradients(b: Int, kvh: Int, j: Int, withQuery: Bool, _ t: Tensors, _ w: BackwardWorkspace) {
        for h in (kvh * group)..<((kvh + 1) * group) {
            for i in 0..<queryTiles { tilePair(b: b, h: h, i: i, j: j, t, w, keys: true, query: withQuery) }
        }
    }

    /// One (query tile i, key tile j) pair of query head h: adds to dK_j and dV_j when `keys`,
    /// to dQ_i when `query`.
    private func tilePair(b: Int, h: Int, i: Int, j: Int, _ t: Tensors, _ w: BackwardWorkspace, keys: Bool, query: Bool) {
        let columns: Int, masked: Bool, first: Int
        switch visibility(i, j) {
        case .none: return
        case .full(let c): (columns, masked, first) = (c, false, 0)
        case .partial(let c, let skipped): (columns, masked, first) = (c, true, skipped)
        }
        // The tile's rows from `first` on: the ones before see none of these keys (P = 0).
        let D = headDim, qStride = heads * D, kvStride = kvHeads * D, ld = keyTile
        let tileRows = queryRows(i), rows = (tileRows.lowerBound + first)..<tileRows.upperBound
        let n = rows.count, c0 = j * keyTile, kvh = h / group
        let qOffset = (b * queryLength + rows.lowerBound) * qStride + h * D
        let kvOffset = (b * keyLength + c0) * kvStride + kvh * D
        let statistics = (b * heads + h) * queryLength + rows.lowerBound
        // Row r of P and dS is row `first` + r of the tile: the packed path computes up to mr − 1
        // rows before `first` into the rows above.
        let (p, dS) = (w.probabilities + first * ld, w.scoreGradients + first * ld)
        let qi = (b: b, h: h, t: i), kj = (b: b, h: kvh, t: j)

        // P (n, columns) = exp(scale · Q_i K_jᵀ − L), 0 where masked or where the row sees nothing;
        // dP = dO_i V_jᵀ (into dS).
        if let packed = t.packed {
            let panels = packed.panels, kPanel = panels.panel(packed.k, b: kj.b, h: kj.h, t: kj.t)
            let (q, row) = panels.rows(packed.q, b: qi.b, h: qi.h, t: qi.t, from: first)
            panels.product(m: tileRows.count - row, n: columns, k: D, alpha: scale, a: q, b: kPanel,
                           c: w.probabilities + row * ld, ldc: ld)
            let dO = panels.rows(packed.dO, b: qi.b, h: qi.h, t: qi.t, from: first).panel
            panels.product(m: tileRows.count - row, n: columns, k: D, a: dO, b: panels.panel(packed.v, b: kj.b, h: kj.h, t: kj.t),
                           c: w.scoreGradients + row * ld, ldc: ld)
        } else {
            Matmul.gemm(transposeA: false, transposeB: true, m: n, n: columns, k: D, alpha: scale,
                        a: t.q + qOffset, lda: qStride, b: t.k + kvOffset, ldb: kvStride, c: p, ldc: ld, precision: t.precision)
            Matmul.gemm(transposeA: false, transposeB: true, m: n, n: columns, k: D,
                        a: t.dO + qOffset, lda: qStride, b: t.v + kvOffset, ldb: kvStride, c: dS, ldc: ld, precision: t.precision)
        }
        if masked { mask(p, ld: ld, rows: rows, columns: c0..<(c0 + columns)) }
        // bf16: the left operands made here go rounded straight into the layout their products
        // read: dS for dQ by rows, Pᵀ and dSᵀ for dV and dK by pairs of rows from tile row
        // `start` (even, with a zero row before `first` when `first` is odd).
        let made = t.packed.flatMap { $0.panels.isBF16 ? ($0.panels, w) : nil }
        let start = made == nil ? first : first & ~1, depths = tileRows.count - start
        for r in 0..<n {
            let (pr, dSr) = (p + r * ld, dS + r * ld), total = t.logsumexp[statistics + r]
            if total == -.infinity { pr.update(repeating: 0, count: columns) } else {
                TileMath.exponentiate(pr, count: columns, minus: total)
            }
            // dS = P ⊙ (dP − D_i)
            TileMath.softmaxGradient(probabilities: pr, dSr, count: columns, rowDot: t.rowDot[statistics + r])
            guard let (panels, w) = made else { continue }
            if query { panels.putLine(dSr, depth: columns, into: w.dS, line: r) }
            let depth = first + r - start
            if keys && (depth % 2 == 1 || r == n - 1) {
                let even = depth & ~1, previous = even + start - first   // the pair's first row (−1: the zero row)
                let second = depth % 2 == 1
                panels.putDepths(previous >= 0 ? p + previous * ld : nil, second ? pr : nil, lines: columns, into: w.pT, depth: even, count: depths)
                panels.putDepths(previous >= 0 ? dS + previous * ld : nil, second ? dSr : nil, lines: columns, into: w.dST, depth: even, count: depths)
            }
        }
        if let packed = t.packed {
            let panels = packed.panels
            if keys {
                let dO = panels.panel(packed.dOFeatures, b: qi.b, h: qi.h, t: qi.t, depth: start)
                let q = panels.panel(packed.qFeatures, b: qi.b, h: qi.h, t: qi.t, depth: start)
                let pT = made == nil ? panels.packLeft(transposed: true, m: columns, k: n, a: p, lda: ld) : panels.made(w.pT, depth: depths)
                panels.product(m: columns, n: D, k: depths, a: pT, b: dO, beta: 1, c: t.dv + kvOffset, ldc: kvStride)
                let dST = made == nil ? panels.packLeft(transposed: true, m: columns, k: n, a: dS, lda: ld) : panels.made(w.dST, depth: depths)
                panels.product(m: columns, n: D, k: depths, alpha: scale, a: dST, b: q, beta: 1, c: t.dk + kvOffset, ldc: kvStride)
            }
            if query {
                let a = made == nil ? panels.packLeft(transposed: false, m: n, k: columns, a: dS, lda: ld) : panels.made(w.dS, depth: columns)
                panels.product(m: n, n: D, k: columns, alpha: scale, a: a,
                               b: panels.panel(packed.kFeatures, b: kj.b, h: kj.h, t: kj.t), beta: 1, c: t.dq + qOffset, ldc: qStride)
            }
            return
        }
        if keys {
            // dV_j (columns, D) += Pᵀ dO_i;  dK_j += scale · dSᵀ Q_i
            Matmul.gemm(transposeA: true, transposeB: false, m: columns, n: D, k: n,
                        a: p, lda: ld, b: t.dO + qOffset, ldb: qStride, beta: 1, c: t.dv + kvOffset, ldc: kvStride, precision: t.precision)
            Matmul.gemm(transposeA: true, transposeB: false, m: columns, n: D, k: n, alpha: scale,
                        a: dS, lda: ld, b: t.q + qOffset, ldb: qStride, beta: 1, c: t.dk + kvOffset, ldc: kvStride, precision: t.precision)
        }
        if query {
            // dQ_i (n, D) += scale · dS K_j
            Matmul.gemm(transposeA: false, transposeB: false, m: n, n: D, k: columns, alpha: scale,
                        a: dS, lda: ld, b: t.k + kvOffset, ldb: kvStride, beta: 1, c: t.dq + qOffset, ldc: qStride, precision: t.precision)
        }
    }

    /// Per-thread scratch of the backward pass: probabilities and their gradient for one tile
    /// pair; with bf16 panels, dS, Pᵀ and dSᵀ as packed left operands.
    struct BackwardWorkspace {
        let probabilities: UnsafeMutablePointer<Float>, scoreGradients: UnsafeMutablePointer<Float>
        let made: (dS: UnsafeMutableRawPointer, pT: UnsafeMutableRawPointer, dST: UnsafeMutableRawPointer)?
        var dS: UnsafeMutableRawPointer { made!.dS }
        var pT: UnsafeMutableRawPointer { made!.pT }
        var dST: UnsafeMutableRawPointer { made!.dST }

        init(rows: Int, columns: Int, panels: FlashPanels?) {
            probabilities = .allocate(capacity: rows * columns)
            scoreGradients = .allocate(capacity: rows * columns)
            made = panels.flatMap { !$0.isBF16 ? nil : ($0.madeBuffer(lines: rows, depth: columns), $0.madeBuffer(lines: columns, depth: rows),
                                 $0.madeBuffer(lines: columns, depth: rows)) }
        }

        func deallocate() {
            probabilities.deallocate(); scoreGradients.deallocate()
            if let made { made.dS.deallocate(); made.pT.deallocate(); made.dST.deallocate() }
        }
    }
}
