import ArgumentParser
import Checkpointing
import Foundation

/// `tessera ckpt list|show|verify`: what a run's checkpoints hold, and whether they are whole.
struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ckpt", abstract: "List, inspect and verify checkpoints; run the checkpoint service.",
                                                    subcommands: [List.self, Show.self, Verify.self, CheckpointServe.self, CheckpointUploadTest.self, CheckpointJob.self])

    /// The checkpoints `path` stands for: one checkpoint directory, or every one under a run
    /// directory (its `checkpoints/`) or a directory of checkpoints.
    static func root(of path: String) throws -> (root: URL, single: URL?) {
        let url = URL(fileURLWithPath: path)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CheckpointError.missing(path: url.path, hint: "pass a run directory (runs/NAME), its checkpoints/ or one checkpoint (runs/NAME/checkpoints/step-00001000)")
        }
        if CheckpointLayout.step(ofDirectory: url.lastPathComponent) != nil
            || FileManager.default.fileExists(atPath: url.appendingPathComponent(CheckpointLayout.trainerState).path) {
            return (url.deletingLastPathComponent(), url)
        }
        let nested = url.appendingPathComponent("checkpoints")
        return (FileManager.default.fileExists(atPath: nested.path) ? nested : url, nil)
    }

    static func megabytes(_ bytes: Int) -> String { String(format: "%.2f MB", Double(bytes) / 1_000_000) }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Steps, sizes, validation losses and layouts of a run's checkpoints.")

        @Argument(help: "A run directory, its checkpoints/ directory, or one checkpoint.")
        var path: String

        func run() throws {
            let (root, single) = try CheckpointCommand.root(of: path)
            let summaries = single.map { url in [CheckpointSummary(url, step: CheckpointLayout.step(ofDirectory: url.lastPathComponent) ?? -1,
                                                                    complete: FileManager.default.fileExists(atPath: url.appendingPathComponent(CheckpointLayout.done).path))] }
                ?? CheckpointSummary.all(root: root)
            guard !summaries.isEmpty else { print("no checkpoints under \(root.path)"); return }
            print("step        size         val_loss  layout                                   directory")
            for s in summaries {
                let loss = s.state?.validationLoss.map { String(format: "%.4f", $0) } ?? "-"
                let status = s.complete ? "" : "  (unfinished: never loaded)"
                print("\(String(s.step).padding(toLength: 10, withPad: " ", startingAt: 0))  \(CheckpointCommand.megabytes(s.bytes).padding(toLength: 11, withPad: " ", startingAt: 0))  \(loss.padding(toLength: 8, withPad: " ", startingAt: 0))  \(s.layout.padding(toLength: 39, withPad: " ", startingAt: 0))  \(s.url.lastPathComponent)\(status)")
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One checkpoint: its state, layout, files, and every tensor with its shape and the file that holds it.")

        @Argument(help: "A checkpoint directory, or a run directory (its newest complete checkpoint).")
        var path: String

        func run() throws {
            let (url, note) = try CheckpointArgument.resolve(path)
            if let note { print(note) }
            let contents = try CheckpointStore.read(url)
            let summary = CheckpointSummary(url, step: contents.state.step, complete: true)
            let s = contents.state
            print("checkpoint \(url.path)")
            print("step \(s.step), \(s.samplesSeen) samples, \(s.tokensSeen) tokens, validation loss \(s.validationLoss.map { String(format: "%.4f", $0) } ?? "not measured at this step")")
            print("written by \(summary.layout); config hash \(s.configHash); \(CheckpointCommand.megabytes(summary.bytes))")
            if let mixers = CheckpointSummary.mixers(huggingFaceConfig: contents.huggingFaceConfig) { print("sequence mixers: \(mixers)") }
            let index = try CheckpointIndex.read(url)
            print("tensors (\(contents.model.count), \(contents.model.entries.reduce(0) { $0 + $1.tensor.count }) parameters):")
            for (name, tensor) in contents.model.entries.sorted(by: { $0.name < $1.name }) {
                let axis = contents.shards[name]?.axis.map { ", sharded along \($0)" } ?? ""
                print("  \(name)  \(tensor.shape)  \(index.weightMap[name] ?? "?")\(axis)")
            }
            print("files:")
            for name in try FileManager.default.contentsOfDirectory(atPath: url.path).sorted() {
                let size = (try? FileManager.default.attributesOfItem(atPath: url.appendingPathComponent(name).path)[.size] as? Int) ?? 0
                print("  \(name)  \(size) bytes")
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check checksums and structure of one checkpoint or every complete one under a run; the first bad file fails it.")

        @Argument(help: "A checkpoint directory, a run directory, or its checkpoints/ directory.")
        var path: String

        func run() throws {
            let (root, single) = try CheckpointCommand.root(of: path)
            let targets = single.map { [$0] } ?? CheckpointStore(root: root).complete().map(\.url)
            // Saves that never finished (a stopped or killed run): not checkpoints, but worth naming.
            let names = single == nil ? ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []).sorted() : []
            let unfinished = names.filter { name in
                name.hasSuffix(".partial") || (CheckpointLayout.step(ofDirectory: name) != nil
                    && !FileManager.default.fileExists(atPath: root.appendingPathComponent(name).appendingPathComponent(CheckpointLayout.done).path))
            }
            let unfinishedNote = unfinished.isEmpty ? "" : "; unfinished saves (not checkpoints; the next train or distill --resume removes them): " + unfinished.joined(separator: ", ")
            guard !targets.isEmpty else {
                throw CommandLineError.nothingToVerify(root: root.path, note: unfinishedNote)
            }
            for url in targets {
                let contents = try CheckpointStore.read(url)
                let files = try CheckpointStore.verifyChecksums(url).count
                print("ok \(url.path): \(files) files match their SHA-256, \(contents.model.count) tensors and their moments whole")
            }
            if !unfinished.isEmpty { print("note: \(root.path):" + unfinishedNote.dropFirst()) }
        }
    }
}
