import Collectives
import Foundation
import Kernels
import Models
import TensorCore
import Training
import TrainingConfig

/// `tessera bench decode --model teacher student`: the time of one generated token (a whole
/// `InferenceSession.decode` step: embeddings, every layer, the head, the greedy pick) at each
/// context length, for the teacher (`--config`, attention against a KV cache of `kv_len`
/// positions) and its student (the same model with `model.sequence_mixer: mamba2`, or a hybrid
/// keeping `--attention-layers`: a recurrent state whose size does not depend on `kv_len`).
/// The caches and states are filled with seeded random values (`InferenceSession.fillSynthetic`)
/// rather than by running a prompt of `kv_len` tokens. Under mpirun or `tessera launch` the
/// attention caches are sharded over the ranks and the Mamba-2 state replicated, as in
/// `tessera generate`. With both models a last line names the crossover: the shortest measured
/// context where the student is faster per token, and the one where least-squares lines
/// through both models' times meet.
extension DecodeBench {
    static let modelLengths = [8192, 16384, 32768, 65536, 131072]

    func runModels(comm: Communicator, threads: KernelThreads) throws {
        let lengths = kvLen.isEmpty ? Self.modelLengths : kvLen
        let source = URL(fileURLWithPath: config).deletingPathExtension().lastPathComponent
        var medians: [String: [Int: Double]] = [:]
        for name in model {
            let overrides = name == "student" ? ["model.sequence_mixer=mamba2", "model.attention_layers=\(attentionLayers)"] : []
            let run = try RunConfig(file: config, overrides: overrides)
            let network = try TransformerLM(config: run.modelConfig, seed: 1)
            let mixers = run.modelConfig.mixerKinds
            for length in lengths {
                let session = try InferenceSession(model: network, communicator: comm.size > 1 ? comm : nil, threads: threads)
                try session.fillSynthetic(positions: length, extra: 8192, seed: 1)
                var token: Int32 = 1
                let seconds = try BenchReport.time(runs: bench.runs, warmup: bench.warmup, comm: comm) {
                    token = Int32(TokenSampler.argmax(try session.decode(token: token)))
                }
                let median = seconds.sorted()[seconds.count / 2]
                medians[name, default: [:]][length] = median * 1e6
                try BenchReport.emit("decode", impl: name, threads: bench.threads, comm: comm,
                                     shape: ["kv_len": length, "model": source, "layers": mixers.count, "d_model": run.model.dModel],
                                     unit: "µs", values: seconds.map { $0 * 1e6 },
                                     extra: ["mixers": mixers.joined(separator: ","), "state_mib": BenchReport.round4(Double(session.usedBytes) / 1_048_576),
                                             "cached_positions": session.cachedPositions])
            }
        }
        guard comm.rank == 0, let teacher = medians["teacher"], let student = medians["student"] else { return }
        let crossover = Self.crossover(teacher: teacher, student: student)
        var object: [String: Any] = ["bench": "decode", "impl": "crossover", "model": source, "threads": bench.threads, "ranks": comm.size,
                                     "unit": "positions", "crossover_kv_len": crossover.measured.map { $0 as Any } ?? NSNull(),
                                     "teacher_fit_us": BenchReport.round4(crossover.teacher.intercept),
                                     "teacher_fit_us_per_position": (crossover.teacher.slope * 1e9).rounded() / 1e9,
                                     "student_fit_us": BenchReport.round4(crossover.student.intercept),
                                     "student_fit_us_per_position": (crossover.student.slope * 1e9).rounded() / 1e9]
        object["estimated_crossover_kv_len"] = crossover.estimated.map { $0 as Any } ?? NSNull()
        object.merge(BenchReport.machine) { $1 }
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        print(String(decoding: data, as: UTF8.self))
        fflush(stdout)
        BenchReport.log("tessera: " + crossover.sentence)
    }

    /// Where the student's per-token time (constant for an all-Mamba student, growing slowly
    /// for a hybrid) meets the teacher's growing one.
    struct Crossover {
        /// A least-squares line through medians: intercept (µs) + slope (µs per position) · kv_len.
        struct Line { var intercept: Double, slope: Double }
        /// Shortest measured context where the student's median is below the teacher's (nil: none).
        var measured: Int?
        var teacher: Line, student: Line
        /// Context where the two lines meet (0 when the student's is below the teacher's from an
        /// empty cache on; nil when the teacher's never overtakes the student's).
        var estimated: Int?

        var sentence: String {
            let fit = String(format: "teacher ≈ %.1f µs + %.4f µs × kv_len, student ≈ %.1f µs + %.4f µs × kv_len",
                             teacher.intercept, teacher.slope, student.intercept, student.slope)
            let estimate = estimated.map { $0 == 0 ? "by the fits it is faster even with an empty cache" : "the fits cross at ≈ \($0) positions" }
                ?? "by the fits the teacher never becomes slower"
            let shortest = measured.map { "the student is faster per token from kv_len \($0), the shortest measured context where it is" }
                ?? "the student is slower at every measured context"
            return "\(shortest); \(estimate) (\(fit))"
        }
    }

    /// The least-squares line through (kv_len, µs) points, with a slope and an intercept of at
    /// least 0 (a step with an empty cache takes no negative time; noisy short lengths could
    /// give one): when the free line's intercept is negative, the best line through the origin.
    static func line(_ points: [(Int, Double)]) -> Crossover.Line {
        let n = Double(points.count)
        guard n > 0 else { return .init(intercept: 0, slope: 0) }
        let meanX = points.reduce(0) { $0 + Double($1.0) } / n, meanY = points.reduce(0) { $0 + $1.1 } / n
        let sxx = points.reduce(0) { $0 + (Double($1.0) - meanX) * (Double($1.0) - meanX) }
        let sxy = points.reduce(0) { $0 + (Double($1.0) - meanX) * ($1.1 - meanY) }
        let slope = sxx > 0 ? sxy / sxx : 0
        // Nor does a longer cache make a step faster: a falling line is noise, its best is flat.
        guard slope >= 0 else { return .init(intercept: meanY, slope: 0) }
        let intercept = meanY - slope * meanX
        guard intercept < 0 else { return .init(intercept: intercept, slope: slope) }
        let xx = points.reduce(0) { $0 + Double($1.0) * Double($1.0) }, xy = points.reduce(0) { $0 + Double($1.0) * $1.1 }
        return .init(intercept: 0, slope: xx > 0 ? xy / xx : 0)
    }

    /// The crossover of per-token medians (µs) by context length.
    static func crossover(teacher: [Int: Double], student: [Int: Double]) -> Crossover {
        let lengths = teacher.keys.filter { student[$0] != nil }.sorted()
        let measured = lengths.first { student[$0]! < teacher[$0]! }
        let t = line(lengths.map { ($0, teacher[$0]!) }), s = line(lengths.map { ($0, student[$0]!) })
        var estimated: Int?
        if s.intercept <= t.intercept && s.slope <= t.slope {
            estimated = 0
        } else if t.slope > s.slope {
            estimated = max(0, Int(((s.intercept - t.intercept) / (t.slope - s.slope)).rounded(.up)))
        }
        return Crossover(measured: measured, teacher: t, student: s, estimated: estimated)
    }
}
