import Foundation
import TensorCore

/// Writes a checkpoint's model as a Hugging Face model directory that `transformers` opens
/// with `AutoModelForCausalLM.from_pretrained`: `config.json` (LlamaForCausalLM, or
/// MixtralForCausalLM for a mixture-of-experts model), `model-0000N-of-0000M.safetensors` with
/// `model.safetensors.index.json`, and a `README.md` saying how tokens are bytes.
///
/// The tensors keep their names (Tessera names parameters as Hugging Face does) and are checked
/// against the names and shapes `config.json` implies before anything is written; optimizer
/// moments and trainer state are left out. The directory is assembled under a temporary name
/// and renamed into place, so a failed export leaves nothing behind.
public enum HuggingFaceExport {
    /// Every tensor the Hugging Face model of `config` (a `config.json`) loads, with its shape,
    /// in Hugging Face's order. Throws `notExportable` when Hugging Face has no such model (a
    /// model with layers other than attention, or a Mixtral with dense layers).
    public static func expectedTensors(config: [String: Any], checkpoint: String) throws -> [(name: String, shape: [Int])] {
        func int(_ key: String) throws -> Int {
            guard let value = config[key] as? Int else {
                throw SoupError.notExportable(checkpoint: checkpoint, reason: "config.json has no integer \(key)")
            }
            return value
        }
        if let mixers = config["mixer_types"] as? [String], mixers.contains(where: { $0 != "llama_attention" }) {
            let layers = mixers.indices.filter { mixers[$0] != "llama_attention" }
            // Phi-Mamba's name for Tessera's Mamba-2 mixer reads as the mixer users configured.
            let kinds = layers.map { mixers[$0] == "discrete_mamba2" ? "Mamba-2" : mixers[$0] }
                .reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
            throw SoupError.notExportable(checkpoint: checkpoint, reason: "layers \(layers) are \(kinds.joined(separator: ", ")) mixers, which transformers cannot load; the checkpoint's config.json already describes the model Phi-Mamba-style (mixer_types, a Block section per run of layers)")
        }
        if let dense = config["tessera_dense_layers"] as? [Int], !dense.isEmpty {
            throw SoupError.notExportable(checkpoint: checkpoint, reason: "layers \(dense) are dense but Mixtral makes every layer a mixture of experts; train with moe.layers: all to export")
        }
        let vocab = try int("vocab_size"), d = try int("hidden_size"), layers = try int("num_hidden_layers")
        let heads = try int("num_attention_heads"), kvHeads = try int("num_key_value_heads"), hidden = try int("intermediate_size")
        let headDim = (config["head_dim"] as? Int) ?? d / max(heads, 1)
        let experts = config["num_local_experts"] as? Int
        var out: [(String, [Int])] = [("model.embed_tokens.weight", [vocab, d])]
        for layer in 0..<layers {
            let p = "model.layers.\(layer)."
            out += [(p + "input_layernorm.weight", [d]),
                    (p + "self_attn.q_proj.weight", [heads * headDim, d]), (p + "self_attn.k_proj.weight", [kvHeads * headDim, d]),
                    (p + "self_attn.v_proj.weight", [kvHeads * headDim, d]), (p + "self_attn.o_proj.weight", [d, heads * headDim]),
                    (p + "post_attention_layernorm.weight", [d])]
            if let experts {
                out.append((p + "block_sparse_moe.gate.weight", [experts, d]))
                for e in 0..<experts {
                    let q = p + "block_sparse_moe.experts.\(e)."
                    out += [(q + "w1.weight", [hidden, d]), (q + "w2.weight", [d, hidden]), (q + "w3.weight", [hidden, d])]
                }
            } else {
                out += [(p + "mlp.gate_proj.weight", [hidden, d]), (p + "mlp.up_proj.weight", [hidden, d]), (p + "mlp.down_proj.weight", [d, hidden])]
            }
        }
        out.append(("model.norm.weight", [d]))
        if (config["tie_word_embeddings"] as? Bool) != true { out.append(("lm_head.weight", [vocab, d])) }
        return out
    }

    /// Writes the export of `model` (a checkpoint's parameters, read from `checkpoint`) with
    /// `config` as `config.json` into `output`, which must not exist or be an empty directory.
    /// `notes` becomes README.md. Returns the file names written.
    @discardableResult
    public static func write(model: StateDict, config: [String: Any], checkpoint: String, notes: String, to output: URL,
                             maxShardBytes: Int = 2 << 30) throws -> [String] {
        let expected = try expectedTensors(config: config, checkpoint: checkpoint)
        let names = Set(expected.map(\.name))
        if let extra = model.names.first(where: { !names.contains($0) }) {
            throw SoupError.notExportable(checkpoint: checkpoint, reason: "tensor \(extra) has no place in \(architecture(config)); is config.json this model's?")
        }
        for (name, shape) in expected {
            guard let tensor = model[name] else {
                throw SoupError.notExportable(checkpoint: checkpoint, reason: "tensor \(name), which \(architecture(config)) needs, is missing")
            }
            if tensor.shape != shape {
                throw SoupError.notExportable(checkpoint: checkpoint, reason: "tensor \(name) has shape \(tensor.shape), config.json implies \(shape)")
            }
        }
        try OutputDirectory.ensureEmpty(output)
        let fm = FileManager.default
        let temporary = output.deletingLastPathComponent().appendingPathComponent(".\(output.lastPathComponent).tmp-\(getpid())")
        var written: [String] = []
        func put(_ data: Data, _ name: String) throws {
            let url = temporary.appendingPathComponent(name)
            do { try data.write(to: url) } catch { throw CheckpointError.writeFailed(path: url.path, reason: error.localizedDescription) }
            written.append(name)
        }
        do {
            if fm.fileExists(atPath: temporary.path) { try fm.removeItem(at: temporary) }
            try fm.createDirectory(at: temporary, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError.writeFailed(path: temporary.path, reason: error.localizedDescription)
        }
        do {
            try put(Data((json(config) + "\n").utf8), "config.json")
            let ordered = StateDict(expected.map { ($0.name, model[$0.name]!) })
            let weightMap = try writeShards(ordered, maxShardBytes: maxShardBytes, put)
            let index: [String: Any] = ["metadata": ["total_size": ordered.entries.reduce(0) { $0 + $1.tensor.count * 4 }], "weight_map": weightMap]
            try put(JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys]), "model.safetensors.index.json")
            try put(Data(notes.utf8), "README.md")
            if fm.fileExists(atPath: output.path) { try fm.removeItem(at: output) }   // empty, checked above
            try fm.moveItem(at: temporary, to: output)
        } catch {
            try? fm.removeItem(at: temporary)
            if let known = error as? CheckpointError { throw known }
            throw CheckpointError.writeFailed(path: output.path, reason: error.localizedDescription)
        }
        return written
    }

    /// `config.json` text with every floating-point value written with a decimal point or
    /// exponent (`0.0`, not `0`): `transformers` checks the config's field types strictly.
    /// Used for every config.json Tessera writes (checkpoints and exports).
    static func json(_ value: Any, indent: String = "") -> String {
        let inner = indent + "  "
        if type(of: value) is NSNumber.Type, let n = value as? NSNumber {   // read back from a JSON file: keep its kind
            switch String(cString: n.objCType) {
            case "d", "f": return json(n.doubleValue, indent: indent)
            case "c", "B": return n.boolValue ? "true" : "false"
            default: return String(n.int64Value)
            }
        }
        switch value {
        case let v as Double: return v.isFinite ? "\(v)" : "null"
        case let v as Float: return json(Double(v), indent: indent)
        case let v as Bool: return v ? "true" : "false"
        case let v as Int: return String(v)
        case let v as String:
            let data = try? JSONSerialization.data(withJSONObject: v, options: [.fragmentsAllowed])
            return data.map { String(decoding: $0, as: UTF8.self) } ?? "\"\""
        case let v as [Any]: return "[" + v.map { json($0, indent: inner) }.joined(separator: ", ") + "]"
        case let v as [String: Any]:
            let body = v.keys.sorted().map { inner + json($0) + ": " + json(v[$0]!, indent: inner) }.joined(separator: ",\n")
            return v.isEmpty ? "{}" : "{\n" + body + "\n" + indent + "}"
        default: return "null"
        }
    }

    static func architecture(_ config: [String: Any]) -> String {
        (config["architectures"] as? [String])?.first ?? "the Hugging Face model"
    }

    /// Model shards of at most `maxShardBytes` (one tensor may exceed it alone); name → file.
    private static func writeShards(_ model: StateDict, maxShardBytes: Int, _ put: (Data, String) throws -> Void) throws -> [String: String] {
        var groups: [[String]] = [[]]
        var bytes = 0
        for (name, tensor) in model.entries {
            if bytes > 0, bytes + tensor.count * 4 > maxShardBytes { groups.append([]); bytes = 0 }
            groups[groups.count - 1].append(name)
            bytes += tensor.count * 4
        }
        var weightMap: [String: String] = [:]
        for (index, names) in groups.enumerated() {
            let file = String(format: "model-%05d-of-%05d.safetensors", index + 1, groups.count)
            try put(SafeTensors.encode(StateDict(names.map { ($0, model[$0]!) }), metadata: ["format": "pt"]), file)
            for name in names { weightMap[name] = file }
        }
        return weightMap
    }
}
