import Foundation

// The attention kernels (materialised, flash forward and backward, lean decode) and the
// state-space ones (SSD chunked scan, mixing matrix, depthwise causal convolution) against
// their naive twins.
extension KernelSelfTest {
    /// Flash attention shapes: tile edges crossed (113 × 203 with 16 × 32 tiles, 300 × 300 with
    /// the default 128 × 256), a decode-like 3 × 799, MHA and GQA, causal and not, odd D.
    static let flashShapes: [Reference.AttentionShape] = [
        .init(batch: 2, queryLength: 113, keyLength: 203, heads: 4, kvHeads: 2, headDim: 59, causal: true),
        .init(batch: 1, queryLength: 300, keyLength: 300, heads: 2, kvHeads: 1, headDim: 64, causal: true),
        .init(batch: 1, queryLength: 3, keyLength: 799, heads: 1, kvHeads: 1, headDim: 32, causal: false),
    ]
    static let flashTiles = [(16, 32), (FlashAttention.defaultQueryTile, FlashAttention.defaultKeyTile), (FlashAttention.defaultQueryTile, 96)]

    static func attention(_ threads: KernelThreads) -> [Outcome] {
        var out: [Outcome] = []
        for (s, (queryTile, keyTile)) in zip(flashShapes, flashTiles) {
            let name = "flash attention Tq \(s.queryLength) Tk \(s.keyLength) D \(s.headDim) \(s.heads)/\(s.kvHeads) heads B \(s.batch)"
                + " \(s.causal ? "causal" : "full") tiles \(queryTile)x\(keyTile)"
            let kernel = FlashAttention(batch: s.batch, queryLength: s.queryLength, keyLength: s.keyLength, heads: s.heads, kvHeads: s.kvHeads,
                                        headDim: s.headDim, causal: s.causal, queryTile: queryTile, keyTile: keyTile)
            let queries = s.batch * s.queryLength * s.heads * s.headDim, keys = s.batch * s.keyLength * s.kvHeads * s.headDim
            let (q, k, v, dO) = (randoms(queries, seed: 71), randoms(keys, seed: 72), randoms(keys, seed: 73), randoms(queries, seed: 74))
            var o = [Float](repeating: .nan, count: queries), lse = [Float](repeating: .nan, count: kernel.logsumexpCount)
            var dq = o, dk = [Float](repeating: .nan, count: keys), dv = dk
            kernel.forward(q: q, k: k, v: v, o: &o, logsumexp: &lse, threads: threads)
            kernel.backward(q: q, k: k, v: v, o: o, logsumexp: lse, dO: dO, dq: &dq, dk: &dk, dv: &dv, threads: threads)
            let (qd, kd, vd) = (q.map(Double.init), k.map(Double.init), v.map(Double.init))
            let want = Reference.attention(s, q: qd, k: kd, v: vd)
            let grads = Reference.attentionBackward(s, q: qd, k: kd, v: vd, dO: dO.map(Double.init))
            out += [outcome(name + ": o", o, want.o), outcome(name + ": logsumexp", lse, want.logsumexp),
                    outcome(name + ": dq", dq, grads.dq), outcome(name + ": dk", dk, grads.dk), outcome(name + ": dv", dv, grads.dv)]
        }
        return out + materialised(threads) + lean(threads)
    }

    /// The materialised kernel (`attention.kernel=naive`) over more than one row block (64).
    static func materialised(_ threads: KernelThreads) -> [Outcome] {
        let (batch, length, heads, kvHeads, headDim) = (2, 67, 4, 2, 24)
        let kernel = CausalAttention(batch: batch, length: length, heads: heads, kvHeads: kvHeads, headDim: headDim)
        let queries = batch * length * heads * headDim, keys = batch * length * kvHeads * headDim
        let (q, k, v, dO) = (randoms(queries, seed: 81), randoms(keys, seed: 82), randoms(keys, seed: 83), randoms(queries, seed: 84))
        var o = [Float](repeating: .nan, count: queries), p = [Float](repeating: .nan, count: kernel.probabilityCount)
        var dq = o, dk = [Float](repeating: .nan, count: keys), dv = dk
        kernel.forward(q: q, k: k, v: v, o: &o, probabilities: &p, threads: threads)
        kernel.backward(q: q, k: k, v: v, o: o, probabilities: p, dO: dO, dq: &dq, dk: &dk, dv: &dv, threads: threads)
        let s = Reference.AttentionShape(batch: batch, queryLength: length, keyLength: length, heads: heads, kvHeads: kvHeads,
                                         headDim: headDim, causal: true)
        let (qd, kd, vd) = (q.map(Double.init), k.map(Double.init), v.map(Double.init))
        let grads = Reference.attentionBackward(s, q: qd, k: kd, v: vd, dO: dO.map(Double.init))
        let name = "materialised attention T \(length) D \(headDim) \(heads)/\(kvHeads) heads B \(batch)"
        return [outcome(name + ": o", o, Reference.attention(s, q: qd, k: kd, v: vd).o),
                outcome(name + ": dq", dq, grads.dq), outcome(name + ": dk", dk, grads.dk), outcome(name + ": dv", dv, grads.dv)]
    }

    /// Decode attention over a cache longer than its length (the rest NaN: reading it fails),
    /// with the default blocks and with small blocks and few lanes.
    static func lean(_ threads: KernelThreads) -> [Outcome] {
        [(1000, 59, 6, 2, 64, 64), (65, 32, 4, 1, 8, 5)].flatMap { length, headDim, heads, kvHeads, blockSize, lanes -> [Outcome] in
            let batch = 2, capacity = length + 3
            let kernel = LeanAttention(batch: batch, heads: heads, kvHeads: kvHeads, headDim: headDim, blockSize: blockSize, lanes: lanes)
            let q = randoms(batch * heads * headDim, seed: 91, scale: 2)
            let kCompact = randoms(batch * kvHeads * length * headDim, seed: 92), vCompact = randoms(kCompact.count, seed: 93)
            var k = [Float](repeating: .nan, count: batch * kvHeads * capacity * headDim), v = k
            for head in 0..<(batch * kvHeads) {
                for j in 0..<(length * headDim) {
                    k[head * capacity * headDim + j] = kCompact[head * length * headDim + j]
                    v[head * capacity * headDim + j] = vCompact[head * length * headDim + j]
                }
            }
            var o = [Float](repeating: .nan, count: batch * heads * headDim), lse = [Float](repeating: .nan, count: batch * heads)
            kernel.forward(q: q, k: k, v: v, length: length, capacity: capacity, o: &o, lse: &lse, threads: threads)
            let want = Reference.decodeAttention(q: q.map(Double.init), k: kCompact.map(Double.init), v: vCompact.map(Double.init),
                                                 batch: batch, length: length, heads: heads, kvHeads: kvHeads, headDim: headDim)
            let name = "lean attention L \(length) D \(headDim) \(heads)/\(kvHeads) heads blocks \(blockSize) lanes \(lanes)"
            return [outcome(name + ": o", o, want.o), outcome(name + ": lse", lse, want.lse)]
        }
    }

    // MARK: State space

    /// The chunked scan (outputs and final states) against the recurrence, the mixing matrix
    /// against its definition, with chunks that do and do not divide the length; the
    /// depthwise convolution against its twin.
    static func stateSpace(_ threads: KernelThreads) -> [Outcome] {
        var out: [Outcome] = []
        for (batch, length, heads, headDim, stateSize, chunk) in [(1, 31, 2, 5, 4, 7), (2, 150, 2, 4, 3, 64)] {
            let shape = Reference.SSDShape(batch: batch, length: length, heads: heads, headDim: headDim, stateSize: stateSize)
            let scan = SSDScan(batch: batch, length: length, heads: heads, headDim: headDim, stateSize: stateSize, chunkSize: chunk)
            let rows = batch * length, (HP, HN) = (heads * headDim, heads * stateSize)
            let x = randoms(rows * HP, seed: 101), b = randoms(rows * HN, seed: 102, scale: 0.7), c = randoms(rows * HN, seed: 103, scale: 0.7)
            let aLog = randoms(rows * heads, seed: 104, scale: 1.5).map { $0 - 1 }, d = randoms(heads, seed: 105)
            var y = [Float](repeating: .nan, count: rows * HP), final = [Float](repeating: .nan, count: scan.finalStateCount)
            var states = [Float](repeating: .nan, count: scan.chunkStateCount), matrix = [Float](repeating: .nan, count: batch * heads * length * length)
            x.withUnsafeBufferPointer { xp in b.withUnsafeBufferPointer { bp in c.withUnsafeBufferPointer { cp in aLog.withUnsafeBufferPointer { ap in
                let (xs, bs, cs, As) = (StridedRows(xp.baseAddress!, stride: HP), StridedRows(bp.baseAddress!, stride: HN),
                                        StridedRows(cp.baseAddress!, stride: HN), StridedRows(ap.baseAddress!, stride: heads))
                scan.forward(x: xs, b: bs, c: cs, aLog: As, d: d, y: &y, chunkStates: &states, finalStates: &final, threads: threads)
                scan.mixingMatrix(b: bs, c: cs, aLog: As, d: d, matrix: &matrix, threads: threads)
            } } } }
            let (bd, cd, ad, dd) = (b.map(Double.init), c.map(Double.init), aLog.map(Double.init), d.map(Double.init))
            let want = Reference.ssdRecurrent(shape, x: x.map(Double.init), b: bd, c: cd, aLog: ad, d: dd)
            let name = "ssd scan B\(batch) T\(length) H\(heads) P\(headDim) N\(stateSize) chunk \(chunk)"
            out += [outcome(name + ": y", y, want.y, tolerance: ssdTolerance), outcome(name + ": final states", final, want.states, tolerance: ssdTolerance),
                    outcome(name + ": mixing matrix", matrix, Reference.ssdMixingMatrix(shape, b: bd, c: cd, aLog: ad, d: dd), tolerance: ssdTolerance)]
        }
        let (batch, length, channels, width) = (2, 13, 7, 4)
        let x = randoms(batch * length * channels, seed: 111), weight = randoms(channels * width, seed: 112), bias = randoms(channels, seed: 113)
        var y = [Float](repeating: .nan, count: x.count)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                DepthwiseCausalConv.forward(x: StridedRows(xp.baseAddress!, stride: channels), weight: weight, bias: bias,
                                            y: MutableStridedRows(yp.baseAddress!, stride: channels), batch: batch, length: length,
                                            channels: channels, width: width, threads: threads)
            }
        }
        let want = Reference.causalConv(x.map(Double.init), weight: weight.map(Double.init), bias: bias.map(Double.init), batch: batch,
                                        length: length, channels: channels, width: width)
        return out + [outcome("depthwise causal conv B\(batch) T\(length) C\(channels) W\(width)", y, want)]
    }
}
