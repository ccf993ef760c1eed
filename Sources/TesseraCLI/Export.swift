import ArgumentParser
import Checkpointing
import Foundation
import Training
import TrainingConfig

/// `tessera export`: checkpoints in other tools' formats.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Export a checkpoint for other tools.", subcommands: [HuggingFace.self])

    /// `tessera export hf`: a directory `transformers` loads with `AutoModelForCausalLM`.
    struct HuggingFace: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "hf",
            abstract: "Write a Hugging Face model directory (LlamaForCausalLM, or MixtralForCausalLM for MoE models): config.json, safetensors shards and index.")

        @Option(help: "A run directory (its newest complete checkpoint) or a checkpoint directory.")
        var checkpoint: String

        @Option(help: "New directory for the export (must not exist, or be empty).")
        var output: String

        func run() throws {
            let (url, note) = try CheckpointArgument.resolve(checkpoint)
            if let note { try? FileHandle.standardError.write(contentsOf: Data("tessera: \(note)\n".utf8)) }
            let contents = try CheckpointStore.read(url)
            let config = try RunConfig(resolvedYAML: contents.runConfig, source: url.appendingPathComponent("run.yaml").path)
            let files = try HuggingFaceExport.write(model: contents.model, config: config.modelConfig.huggingFaceConfig, checkpoint: url.path,
                                                   notes: Self.notes(config, checkpoint: url, step: contents.state.step),
                                                   to: URL(fileURLWithPath: output))
            print("exported \(url.path) (step \(contents.state.step)) to \(output): \(files.joined(separator: ", "))")
        }

        /// README.md of the export: where it came from and how its tokens are bytes.
        static func notes(_ config: RunConfig, checkpoint: URL, step: Int) -> String {
            let architecture = config.moeSpec == nil ? "LlamaForCausalLM" : "MixtralForCausalLM"
            var text = """
                # Tessera export

                \(architecture) exported by `tessera export hf` from \(checkpoint.path) (step \(step)).

                ## Tokens are bytes
                There is no tokenizer: the model reads and writes raw bytes. Token id = byte value
                (vocab_size \(config.model.vocabSize)); encode text with `list(text.encode("utf-8"))` and decode
                generated ids with `bytes(ids).decode("utf-8", errors="replace")`. There are no special tokens
                (bos/eos are null): start from a prompt and stop after a number of tokens.

                ```python
                import torch
                from transformers import AutoModelForCausalLM
                model = AutoModelForCausalLM.from_pretrained("THIS_DIRECTORY", torch_dtype=torch.float32)
                ids = torch.tensor([list("ROMEO:".encode())])
                out = model.generate(ids, max_new_tokens=100, do_sample=False)
                print(bytes(out[0].tolist()).decode(errors="replace"))
                ```

                Weights are float32, trained on sequences of \(config.data.seqLen) tokens (max_position_embeddings).

                """
            if config.moeSpec != nil, config.moe.capacityFactor > 0 {
                text += """
                    ## Capacity
                    Tessera trained this mixture of experts with capacity factor \(config.moe.capacityFactor), dropping (token, expert)
                    pairs over capacity; Mixtral has no capacity and drops nothing, so its losses can differ from `tessera eval`'s.

                    """
            }
            return text
        }
    }
}
