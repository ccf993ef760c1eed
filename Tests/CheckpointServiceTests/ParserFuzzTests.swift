@testable import CheckpointService
import Checkpointing
import Foundation
import TensorCore
import Testing
import _TestSupport

/// Bounded fuzzing of the parsers that read what a peer or a file supplies (issue 20): mutated
/// part headers, manifests on disk, frames and safetensors files, from a fixed seed. Every case
/// must be refused with an error or accepted as valid; none may crash, and together they may
/// not grow the process's peak memory by more than `memoryBudget` (one case honouring a
/// 2^40-rank header or a 2^60-element shape would take terabytes and crash).
@Suite(.serialized) struct ParserFuzzTests {
    static let memoryBudget = 512 << 20
    static let sha = String(repeating: "0f", count: 32)

    static func validHeader(_ m: inout ByteMutator) -> [UInt8] {
        let ranks = 1 + m.below(8)
        let files = (0..<(1 + m.below(3))).map { PartFileEntry(name: "model-0000\($0 + 1)-of-00003.safetensors", size: m.below(1 << 20), sha256: sha) }
        return Array(try! JSONEncoder().encode(PartHeader(step: m.below(1 << 40), rank: m.below(ranks), ranks: ranks, files: files)))
    }

    /// An accepted header is within every limit.
    static func checkAccepted(_ header: PartHeader) {
        #expect((0...CheckpointLayout.maxStep).contains(header.step) && (1...ServiceLimits.maxRanks).contains(header.ranks))
        #expect((0..<header.ranks).contains(header.rank) && header.files.count <= ServiceLimits.maxFilesPerPart)
        #expect(header.files.allSatisfy { $0.name.utf8.count <= ServiceLimits.maxFileNameBytes && !$0.name.utf8.contains(0) && (0...ServiceLimits.maxFileBytes).contains($0.size) })
    }

    @Test func mutatedPartHeadersManifestsFramesAndSafetensorsAreRefusedOrValid() throws {
        let start = Date(), peak = peakResidentBytes()
        var m = ByteMutator(seed: 20)
        var accepted = [String: Int](), refused = [String: Int]()
        func run(_ kind: String, _ body: () throws -> Void) {
            do { try body(); accepted[kind, default: 0] += 1 } catch { refused[kind, default: 0] += 1 }
        }
        for _ in 0..<5000 {   // part headers, as a peer sends them
            let bytes = m.mutate(Self.validHeader(&m))
            run("header") { Self.checkAccepted(try PartHeader.decode(bytes, from: "fuzz")) }
        }
        for _ in 0..<5000 {   // frames, the CRC recomputed half the time so that the mutation reaches the length and type
            let payload = m.mutate(Self.validHeader(&m))
            var bytes = m.mutate(Frame(FrameType(rawValue: [1, 2, 3, 4, 5, 20, 21][m.below(7)])!, payload).bytes)
            if m.below(2) == 0, bytes.count >= 9 {
                bytes.replaceSubrange((bytes.count - 4)..., with: Frame.littleEndian(CRC32.checksum(Array(bytes.dropLast(4)))))
            }
            run("frame") {
                let (frame, length) = try Frame.parse(bytes)
                #expect(length <= bytes.count && frame.payload.count <= Frame.maxPayload)
            }
        }
        let tensors = StateDict([("a", Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])), ("b", Tensor(shape: [4], scalars: [7, 8, 9, 10]))])
        let file = Array(try SafeTensors.encode(tensors, metadata: ["step": "3"]))
        let headerLength = (0..<8).reduce(0) { $0 | Int(file[$1]) << (8 * $1) }
        let json = Array(file[8..<(8 + headerLength)]), data = Array(file[(8 + headerLength)...])
        for _ in 0..<5000 {   // safetensors files: the header's numbers (its length kept right half the time), its length field, the data
            var bytes = m.mutate(file)
            if m.below(2) == 0 {
                let mutated = m.below(2) == 0 ? m.replacingANumber(json) : m.mutate(json)
                bytes = (0..<8).map { UInt8(truncatingIfNeeded: mutated.count >> (8 * $0)) } + mutated + data
            }
            run("safetensors") {
                let decoded = try SafeTensors.decode(Data(bytes), path: "fuzz")
                let floats = decoded.tensors.entries.reduce(0) { $0 + $1.tensor.count }
                #expect(floats * 4 <= bytes.count, "accepted more tensor data than the file holds")
            }
        }
        let directory = TemporaryDirectory("tessera-fuzz-manifests")
        defer { directory.remove() }
        let server = CheckpointServer(root: directory.url, token: String(repeating: "ab", count: 16), log: { _ in })
        for i in 0..<1000 {   // manifests on disk, read back as a restarted service reads them
            let step = 1 + i % 50
            let folder = server.manifestsURL(step)
            try? FileManager.default.removeItem(at: folder)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            for rank in 0..<(1 + m.below(3)) {
                var header = PartHeader(step: step, rank: rank, ranks: 3, files: [PartFileEntry(name: "f\(rank)", size: 8, sha256: Self.sha)])
                if m.below(4) == 0 { header.ranks = [1 << 40, 0, -3, 2][m.below(4)] }
                let bytes = m.below(2) == 0 ? m.mutate(Array(try JSONEncoder().encode(header))) : Array(try JSONEncoder().encode(header))
                try Data(bytes).write(to: folder.appendingPathComponent("rank-\(rank).json"))
            }
            run("manifest") {
                let parts = try server.manifests(step)
                for (rank, part) in parts { Self.checkAccepted(part); #expect(part.rank == rank && part.step == step) }
            }
        }
        let cases = accepted.values.reduce(0, +) + refused.values.reduce(0, +)
        print("fuzz: \(cases) cases in \(String(format: "%.1f", Date().timeIntervalSince(start))) s; accepted \(accepted.sorted { $0.key < $1.key }), refused \(refused.sorted { $0.key < $1.key })")
        #expect(cases >= 10_000)
        #expect(refused.keys.count == 4 && accepted.keys.count == 4, "every parser both refused and accepted some cases")
        #expect(peakResidentBytes() - peak < Self.memoryBudget)
        #expect(Date().timeIntervalSince(start) < 60)
    }

    /// The JSON parsers bound nesting: a header of ten thousand nested arrays is refused, not a stack overflow.
    @Test func deeplyNestedJSONIsRefused() {
        let deep = Array(("{\"step\": " + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000) + "}").utf8)
        #expect(throws: CheckpointServiceError.self) { try PartHeader.decode(deep, from: "fuzz") }
        var file = [UInt8](repeating: 0, count: 8)
        let header = Array(("{\"a\": " + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000) + "}").utf8)
        file.replaceSubrange(0..<8, with: (0..<8).map { UInt8(truncatingIfNeeded: header.count >> (8 * $0)) })
        #expect(throws: CheckpointError.self) { try SafeTensors.decode(Data(file + header), path: "deep") }
    }
}
