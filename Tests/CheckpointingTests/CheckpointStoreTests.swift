import Testing
import Checkpointing
import Foundation
import TensorCore
import _TestSupport

@Suite struct CheckpointStoreTests {
    func contents(step: Int) -> CheckpointContents {
        let model = StateDict([("model.embed_tokens.weight", Tensor(shape: [3, 2], scalars: [1, 2, 3, 4, 5, 6])),
                               ("model.norm.weight", Tensor(shape: [2], scalars: [0.5, -0.25]))])
        let optimizer = StateDict([("model.embed_tokens.weight.exp_avg", Tensor(shape: [3, 2], scalars: [1, 2, 3, 4, 5, 6])),
                                   ("model.embed_tokens.weight.exp_avg_sq", Tensor(shape: [3, 2], scalars: [6, 5, 4, 3, 2, 1])),
                                   ("model.norm.weight.exp_avg", Tensor(shape: [2], scalars: [7, 8])),
                                   ("model.norm.weight.exp_avg_sq", Tensor(shape: [2], scalars: [2, 1]))])
        let shards = ["model.embed_tokens.weight": TensorShard(globalShape: [6, 2], offset: [3, 0], axis: "expert"),
                      "model.norm.weight": TensorShard(globalShape: [2], offset: [0])]
        return CheckpointContents(model: model, optimizer: optimizer, shards: shards,
                                  state: TrainerState(step: step, seed: 3, samplesSeen: step * 8, tokensSeen: step * 80, configHash: "abc",
                                                      dataParallel: 2, sequenceParallel: 1),
                                  runConfig: "train:\n  steps: 5\n", huggingFaceConfig: ["model_type": "llama"])
    }

    @Test func writesHuggingFaceLayoutAndReadsItBack() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let store = CheckpointStore(root: directory.url, maxShardBytes: 16)   // forces two model shards
        let url = try store.write(contents(step: 7))
        #expect(url.lastPathComponent == "step-00000007")
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: url.path))
        #expect(files.isSuperset(of: ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                                      "config.json", "optimizer-00001-of-00001.safetensors", "trainer_state.json", "run.yaml", "DONE"]))
        let back = try CheckpointStore.read(url)
        #expect(back.model == contents(step: 7).model)
        #expect(back.optimizer == contents(step: 7).optimizer)
        #expect(back.shards == contents(step: 7).shards, "each tensor's global shape, offset and axis survive")
        #expect(back.state == contents(step: 7).state)
    }

    @Test func aDirectoryWithoutDoneDoesNotCount() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let store = CheckpointStore(root: directory.url)
        let good = try store.write(contents(step: 1))
        let half = try store.write(contents(step: 2))
        try FileManager.default.removeItem(at: half.appendingPathComponent("DONE"))
        #expect(store.latest()?.lastPathComponent == good.lastPathComponent)
        #expect(throws: CheckpointError.self) { try CheckpointStore.read(half) }
    }

    @Test func truncatedOrCorruptTensorsAreReportedWithTheFile() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let url = try CheckpointStore(root: directory.url).write(contents(step: 3))
        let shard = url.appendingPathComponent("model-00001-of-00001.safetensors")
        let bytes = try Data(contentsOf: shard)
        try bytes.prefix(bytes.count - 4).write(to: shard)
        let error = #expect(throws: CheckpointError.self) { try CheckpointStore.read(url) }
        #expect(error?.description.contains("model-00001-of-00001.safetensors") == true)
        #expect(error?.description.contains("corrupt or truncated") == true)
        try Data([1, 2, 3]).write(to: shard)
        #expect(throws: CheckpointError.self) { try CheckpointStore.read(url) }
    }

    @Test func pruneKeepsTheNewest() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let store = CheckpointStore(root: directory.url)
        for step in 1...4 { try store.write(contents(step: step)) }
        store.prune(keep: 2)
        #expect(store.complete().map(\.step) == [3, 4])
    }

    @Test func safetensorsHeaderIsAlignedAndSelfDescribing() throws {
        let data = try SafeTensors.encode(StateDict([("a", Tensor(shape: [1, 3], scalars: [1, 2, 3]))]), metadata: ["format": "pt"])
        let headerLength = data.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        #expect((8 + Int(headerLength)) % 8 == 0)
        let header = String(decoding: data.subdata(in: 8..<(8 + Int(headerLength))), as: UTF8.self)
        #expect(header.contains("\"dtype\":\"F32\"") && header.contains("\"shape\":[1,3]") && header.contains("\"data_offsets\":[0,12]"))
        #expect(try SafeTensors.decode(data, path: "x").tensors["a"]?.scalars == [1, 2, 3])
    }
}
