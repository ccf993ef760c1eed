import Testing
import Collectives
import Training
import TrainingConfig
import _TestSupport

/// The project's main correctness property: N data-parallel ranks give the numbers one rank
/// gives, step by step.
///
/// Losses alone cannot show it: every rank reports the all-reduced loss, and AdamW hardly sees
/// a gradient scaled by a constant. So the gradient norm of every step is compared too, and at
/// the end the parameters themselves: bitwise the same on every rank (each applies the same
/// update to the same values) and within Float32 tolerance of one rank's.
@Suite struct DataParallelExactnessTests {
    static let steps = 20

    static func train(ranks: Int, overlap: Bool, data: String, run: String) throws -> [RankRun] {
        let config = try RunConfig(file: nil, overrides: tinyOverrides(data: data, run: run, steps: steps) + ["parallel.overlap=\(overlap)"])
        return try trainInProcess(config, ranks: ranks, steps: steps)
    }

    @Test(arguments: [(2, true), (3, true), (4, true), (2, false), (3, false), (4, false)])
    func ranksMatchOneRankForTwentySteps(ranks: Int, overlap: Bool) throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let data = try makeCorpus(in: directory)
        let single = try Self.train(ranks: 1, overlap: overlap, data: data, run: directory.file("run1"))[0]
        let parallel = try Self.train(ranks: ranks, overlap: overlap, data: data, run: directory.file("runN"))
        #expect(single.losses.count == Self.steps)
        #expect(single.losses.last! < single.losses.first! - 0.5, "the tiny model should learn: \(single.losses.first!) → \(single.losses.last!)")
        #expect(single.gradientNorms.allSatisfy { $0 > 0 && $0.isFinite }, "gradient norms \(single.gradientNorms)")
        #expect(single.parameters.count > 0)
        for (rank, seen) in parallel.enumerated() {
            #expect(seen.losses == parallel[0].losses, "rank \(rank) reports the losses rank 0 reports")
            #expect(seen.gradientNorms == parallel[0].gradientNorms, "rank \(rank) clips by the gradient norm rank 0 uses")
            #expect(seen.parameters == parallel[0].parameters,
                    "rank \(rank)'s parameters differ from rank 0's: \(Self.worst(seen.parameters, parallel[0].parameters))")
            #expect(maxRelativeError(seen.losses, single.losses) < 1e-5, "ranks=\(ranks) losses: \(seen.losses) vs \(single.losses)")
            #expect(maxRelativeError(seen.gradientNorms, single.gradientNorms) < 1e-5,
                    "ranks=\(ranks) gradient norms: \(seen.gradientNorms) vs \(single.gradientNorms)")
            #expect(maxRelativeError(seen.parameters, single.parameters) < 1e-5,
                    "ranks=\(ranks) rank \(rank)'s parameters vs one rank's: \(Self.worst(seen.parameters, single.parameters))")
        }
    }

    /// The element where two parameter vectors differ most (error as in `maxRelativeError`).
    static func worst(_ a: [Float], _ b: [Float]) -> String {
        guard a.count == b.count else { return "\(a.count) vs \(b.count) values" }
        var index = 0, error = -1.0
        for i in a.indices {
            let e = Double(abs(a[i] - b[i])) / max(1, Double(abs(b[i])))
            if e.isNaN { return "NaN at index \(i): \(a[i]) vs \(b[i])" }
            if e > error { index = i; error = e }
        }
        return a.isEmpty ? "no values" : "largest error \(error) at index \(index): \(a[index]) vs \(b[index])"
    }
}
