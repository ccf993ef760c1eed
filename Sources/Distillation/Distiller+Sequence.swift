import Models
import TensorCore
import Training

/// Distillation with the sequence sharded over S sequence ranks (the grid's sequence axis).
///
/// Every rank takes whole sequences from `nextBatch` and runs teacher and student on its
/// zigzag positions only (`positions`). Each stage's loss is a sum over rows, so each rank
/// computes its rows' share with the whole sum's normalisation, and the shares are summed
/// over the sequence ranks (`averageOverRanks`, and the gradient reducer, whose replicated
/// parameters are summed over every rank):
/// - stage 1: the teacher's mixer inputs are gathered into whole sequences; every rank computes
///   the teacher's probabilities A and the student's M over them (T × T per head) and counts
///   the query rows at its positions. The teacher's attention pass is repeated on each rank
///   over the whole sequences (S times its work, and B·H·T² floats of A and of M per layer).
/// - stage 2: the student's block runs on the teacher's block input rows at the rank's
///   positions (its Mamba mixer passes the scan state between ranks), against the teacher's rows.
/// - stage 3: the logits of the rank's positions; each row's next token comes from the whole
///   sequence, the last position has none.
extension Distiller {
    /// The tokens of `tokens` (B × T, whole sequences) at this rank's positions (B × localLength).
    func local(_ tokens: [Int32]) -> [Int32] {
        guard localLength != length else { return tokens }
        return (0..<batch).flatMap { b in positions.map { tokens[b * length + $0] } }
    }

    /// Whole sequences (B·T, width) from every sequence rank's rows (B·localLength, width) at
    /// its positions.
    func wholeSequences(_ rows: [Float], width: Int) throws -> [Float] {
        let comm = grid.sequence, ranks = comm.size, block = batch * localLength * width
        precondition(rows.count == block, "wholeSequences: (B·localLength, width) rows")
        var gathered = [Float](repeating: 0, count: block * ranks)
        try rows.withUnsafeBytes { input in
            try gathered.withUnsafeMutableBytes { try comm.allGather(input, counts: [Int](repeating: block * 4, count: ranks), into: $0) }
        }
        var whole = [Float](repeating: 0, count: batch * length * width)
        for rank in 0..<ranks {
            let at = SequenceSharding.positions(length: length, ranks: ranks, rank: rank)
            for b in 0..<batch {
                for (t, position) in at.enumerated() {
                    let from = rank * block + (b * localLength + t) * width, to = (b * length + position) * width
                    whole.replaceSubrange(to..<(to + width), with: gathered[from..<(from + width)])
                }
            }
        }
        return whole
    }

    /// Stage 1's targets with the sequence sharded: each Mamba layer's teacher mixer input,
    /// gathered into whole sequences (B·T, d), and the teacher's attention probabilities
    /// (B, H, T, T) over them.
    func wholeSequenceTargets(tokens: [Int32]) throws -> [Int: (input: [Float], attention: [Float])] {
        let inputs = try teacherCaptures(tokens: tokens, .sequenceMixerInput, nil)
        var out: [Int: (input: [Float], attention: [Float])] = [:]
        for layer in mambaLayers {
            let whole = try wholeSequences(inputs[layer]!.0, width: teacher.config.dModel)
            let attention = try teacher.attentionProbabilities(layer: layer, input: whole, batch: batch, length: length)
            guard !attention.isEmpty else { throw DistillError.teacherLayerNotAttention(layer: layer) }
            out[layer] = (whole, attention)
        }
        return out
    }
}
