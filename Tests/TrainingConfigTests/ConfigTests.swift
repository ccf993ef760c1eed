import Testing
import Models
import Foundation
import TrainingConfig
import _TestSupport

/// The typed run config: parsing with origins, ranges, canonical values, the numeric hash,
/// the YAML written into checkpoints, and the field table against the section structs.
@Suite struct ConfigTests {
    func error(_ body: () throws -> Void) -> ConfigError? {
        do { try body() } catch let error as ConfigError { return error } catch { Issue.record("not a ConfigError: \(error)") }
        return nil
    }

    func write(_ text: String, _ name: String, in directory: TemporaryDirectory) throws -> String {
        let path = directory.file(name)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    // MARK: Unknown keys and types

    @Test func unknownKeyInAFileNamesFileLineAndSuggestion() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = try write("model:\n  d_model: 64\ntrain:\n  global_bach: 8\n", "bad.yaml", in: directory)
        let caught = error { _ = try RunConfig(file: file) }
        #expect(caught == .unknownKey(key: "train.global_bach", suggestion: "train.global_batch", origin: .file(file, line: 4)))
        let text = caught?.description ?? ""
        #expect(text.hasPrefix("\(file):4: unknown key 'train.global_bach'; did you mean 'train.global_batch'?"))
        #expect(text.contains("tessera train --help-config"))
    }

    @Test func unknownSectionsAndKeysOutsideSectionsAreSuggested() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let misspelt = try write("trian:\n  steps: 5\n", "section.yaml", in: directory)
        #expect(error { _ = try RunConfig(file: misspelt) }
                == .unknownKey(key: "trian.steps", suggestion: "train.steps", origin: .file(misspelt, line: 2)))
        let bare = try write("steps: 5\n", "bare.yaml", in: directory)
        #expect(error { _ = try RunConfig(file: bare) } == .unknownKey(key: "steps", suggestion: "train.steps", origin: .file(bare, line: 1)))
    }

    @Test func unknownKeyViaSetNamesSet() {
        let caught = error { _ = try RunConfig(file: nil, overrides: ["train.global_bach=8"]) }
        #expect(caught == .unknownKey(key: "train.global_bach", suggestion: "train.global_batch", origin: .override))
        #expect(caught?.description.hasPrefix("--set: unknown key 'train.global_bach'; did you mean 'train.global_batch'?") == true)
        #expect(error { _ = try RunConfig(file: nil, overrides: ["train.steps"]) } == .malformedOverride("train.steps"))
        #expect(error { _ = try RunConfig(file: nil, overrides: ["=5"]) } == .malformedOverride("=5"))
    }

    @Test func wrongTypesNameKeyExpectedTypeAndOrigin() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = try write("train:\n  steps: many\nparallel:\n  overlap: [true]\n", "types.yaml", in: directory)
        let caught = error { _ = try RunConfig(file: file) }
        #expect(caught == .wrongType(key: "train.steps", value: "many", expected: .int, origin: .file(file, line: 2)))
        #expect(caught?.description == "\(file):2: train.steps = 'many' is not an integer")
        let list = try write("parallel:\n  overlap: [true]\n", "list.yaml", in: directory)
        #expect(error { _ = try RunConfig(file: list) } == .wrongType(key: "parallel.overlap", value: "[…]", expected: .bool, origin: .file(list, line: 2)))

        #expect(error { _ = try RunConfig(file: nil, overrides: ["train.steps=2.5"]) }
                == .wrongType(key: "train.steps", value: "2.5", expected: .int, origin: .override))
        #expect(error { _ = try RunConfig(file: nil, overrides: ["parallel.overlap=yes"]) }?.description
                == "--set: parallel.overlap = 'yes' is not true or false")
        #expect(error { _ = try RunConfig(file: nil, overrides: ["train.lr=inf"]) }
                == .wrongType(key: "train.lr", value: "inf", expected: .float, origin: .override))
        #expect(error { _ = try RunConfig(file: nil, overrides: ["train.lr=fast"]) }?.description
                == "--set: train.lr = 'fast' is not a finite number")
        #expect(error { _ = try RunConfig(file: nil, overrides: ["data.dir="]) }
                == .wrongType(key: "data.dir", value: "", expected: .string, origin: .override))
        let section = try write("train: 5\n", "section.yaml", in: directory)
        #expect(error { _ = try RunConfig(file: section) } == .notAMapping(what: "section 'train'", origin: .file(section, line: 1)))
    }

    @Test func aKeySetTwiceInAFileIsAnError() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = try write("train:\n  steps: 5\n  steps: 6\n", "twice.yaml", in: directory)
        #expect(error { _ = try RunConfig(file: file) }
                == .duplicateKey(key: "train.steps", origin: .file(file, line: 3), first: .file(file, line: 2)))
    }

    @Test func emptyFilesAndSectionsKeepTheDefaults() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let empty = try write("# nothing yet\n", "empty.yaml", in: directory)
        let sections = try write("model:\ntrain:\n", "sections.yaml", in: directory)
        var defaults = try RunConfig(file: nil)
        defaults.source = empty
        #expect(try RunConfig(file: empty) == defaults)
        defaults.source = sections
        #expect(try RunConfig(file: sections) == defaults)
    }

    // MARK: Ranges

    static let rangeCases: [(override: String, rule: ConfigRule)] = [
        ("model.vocab_size=0", .atLeastOne), ("model.d_model=0", .atLeastOne), ("model.layers=0", .atLeastOne),
        ("model.heads=0", .atLeastOne), ("model.kv_heads=0", .atLeastOne), ("model.ffn_hidden=0", .atLeastOne),
        ("data.seq_len=0", .atLeastOne), ("train.steps=0", .atLeastOne), ("train.global_batch=0", .atLeastOne),
        ("train.log_every=0", .atLeastOne), ("train.threads=0", .atLeastOne), ("eval.batches=0", .atLeastOne),
        ("parallel.sequence=0", .atLeastOne),
        ("train.warmup_steps=-1", .notNegative), ("eval.every=-1", .notNegative), ("checkpoint.every=-1", .notNegative),
        ("checkpoint.keep=-1", .notNegative), ("checkpoint.keep_best=-1", .notNegative), ("parallel.data=-1", .notNegative),
        ("checkpoint.service=node1", .hostPortOrEmpty), ("checkpoint.service=node1:0", .hostPortOrEmpty), ("checkpoint.service=:7070", .hostPortOrEmpty),
        ("train.min_lr=-0.1", .notNegative), ("train.weight_decay=-0.1", .notNegative), ("train.grad_clip=-1", .notNegative),
        ("train.seed=-1", .notNegative), ("model.norm_eps=-1e-5", .notNegative),
        ("train.lr=0", .positive), ("train.eps=0", .positive), ("parallel.bucket_mb=0", .positive),
        ("parallel.timeout_seconds=-1", .positive), ("model.rope_theta=0", .positive),
        ("train.beta1=1", .unitInterval), ("train.beta2=-0.5", .unitInterval), ("train.beta2=1.5", .unitInterval),
    ]

    @Test(arguments: rangeCases)
    func eachRangeRuleRejectsAValueOutside(override: String, rule: ConfigRule) throws {
        let key = String(override.prefix { $0 != "=" })
        let caught = error { _ = try RunConfig(file: nil, overrides: [override]) }
        guard case .outOfRange(let named, _, let broken, let origin)? = caught else {
            Issue.record("\(override): \(String(describing: caught))"); return
        }
        #expect(named == key && broken == rule && origin == .override)
        #expect(caught!.description.hasPrefix("--set: \(key) = ") && caught!.description.hasSuffix(rule.requirement!))
    }

    @Test func valuesAtTheEdgeOfTheirRangeAreAccepted() throws {
        let edges = ["train.warmup_steps=0", "eval.every=0", "checkpoint.every=0", "checkpoint.keep=0", "parallel.data=0",
                     "train.min_lr=0", "train.weight_decay=0", "train.grad_clip=0", "train.seed=0", "train.beta1=0",
                     "train.beta2=0.999999", "train.steps=1", "train.lr=1e-12"]
        let config = try RunConfig(file: nil, overrides: edges)
        #expect(config.train.gradClip == 0 && config.train.beta1 == 0 && config.checkpoint.keep == 0)
    }

    /// parallel.tcp_seal takes on, off or auto (default auto, measured); anything else is one
    /// line naming the key, the value's origin and the choices.
    @Test func theTCPSealKeyTakesOnOffOrAutoAndRefusesOthersInOneLine() throws {
        #expect(try RunConfig(file: nil).parallel.tcpSeal == "auto")
        for mode in ["on", "off", "auto"] {
            #expect(try RunConfig(file: nil, overrides: ["parallel.tcp_seal=\(mode)"]).parallel.tcpSeal == mode)
        }
        for bad in ["yes", "ON", "true"] {
            let text = error { _ = try RunConfig(file: nil, overrides: ["parallel.tcp_seal=\(bad)"]) }?.description ?? "accepted"
            #expect(text.hasPrefix("--set: parallel.tcp_seal = ") && text.hasSuffix("must be one of off, on, auto") && !text.contains("\n"), "\(bad): \(text)")
        }
    }

    @Test func theCheckpointServiceIsHostPortOrEmpty() throws {
        #expect(try RunConfig(file: nil, overrides: ["checkpoint.service=node1:7070"]).checkpoint.service == "node1:7070")
        #expect(try RunConfig(file: nil, overrides: ["checkpoint.service=[::1]:65535"]).checkpoint.service == "[::1]:65535")
        let cleared = try RunConfig(file: nil, overrides: ["checkpoint.service=node1:7070", "checkpoint.service="])
        #expect(cleared.checkpoint.service == "")
        #expect(try RunConfig(resolvedYAML: cleared.yaml, source: "run.yaml").checkpoint.service == "", "an empty service survives run.yaml")
    }

    @Test func aRangeErrorNamesWhereTheValueCameFrom() throws {
        #expect(error { _ = try RunConfig(file: nil, overrides: ["train.steps=-5"]) }?.description
                == "--set: train.steps = -5 must be at least 1")
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = try write("# steps\ntrain:\n  lr: 0.001\n  steps: -5\n", "range.yaml", in: directory)
        #expect(error { _ = try RunConfig(file: file) }
                == .outOfRange(key: "train.steps", value: "-5", rule: .atLeastOne, origin: .file(file, line: 4)))
        #expect(error { _ = try RunConfig(file: file) }?.description == "\(file):4: train.steps = -5 must be at least 1")
        // The file's bad value is overridden: resolved first, validated after.
        #expect(try RunConfig(file: file, overrides: ["train.steps=5"]).train.steps == 5)
        // A later override of a config read from a file names --set.
        let good = try RunConfig(file: file, overrides: ["train.steps=5"])
        #expect(error { _ = try good.applying(["train.beta1=2"]) }
                == .outOfRange(key: "train.beta1", value: "2.0", rule: .unitInterval, origin: .override))
    }

    @Test func modelProblemsNameTheirSource() throws {
        #expect(error { _ = try RunConfig(file: nil, overrides: ["model.heads=3"]) }?.description
                .hasPrefix("--set: model.d_model = 256 is not divisible by model.heads = 3; ") == true)
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = try write("model:\n  d_model: 96\n  heads: 4\n  kv_heads: 3\n", "model.yaml", in: directory)
        #expect(error { _ = try RunConfig(file: file) }
                == .invalidModel(source: file, problems: ["model.heads = 4 is not divisible by model.kv_heads = 3"]))
    }

    // MARK: Canonical values and the numeric hash

    @Test func equalNumbersSpelledDifferentlyAreTheSameConfig() throws {
        let a = try RunConfig(file: nil, overrides: ["train.lr=3e-3", "parallel.overlap=TRUE", "model.layers=+4"])
        let b = try RunConfig(file: nil, overrides: ["train.lr=0.003", "parallel.overlap=true", "model.layers=4"])
        #expect(a == b && a.numericHash == b.numericHash && a.yaml == b.yaml)
        #expect(a.train.lr == 0.003 && a.yaml.contains("  lr: 0.003\n"))
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = try write("train:\n  lr: 3.0e-3\n", "lr.yaml", in: directory)
        #expect(try RunConfig(file: file).numericHash == a.numericHash)
    }

    /// Checkpoints record the hash. Version 1 (computed with the string-keyed RunConfig at
    /// 189ab09) is what older checkpoints hold: they must still match.
    @Test func theNumericHashIsPinned() throws {
        let tiny = try RunConfig(file: nil), old = try RunConfig(resolvedYAML: Self.oldTinyRunYAML, source: "run.yaml")
        #expect(tiny.numericHash == "v2:7c5d945efd1ac909")
        #expect(tiny.numericHashVersion1 == "78a82af90da7ff11" && tiny.matchesNumericHash("78a82af90da7ff11"))
        #expect(old.numericHashVersion1 == "c540f807af5cbc4b" && old.matchesNumericHash("c540f807af5cbc4b"))
        #expect(!tiny.matchesNumericHash("c540f807af5cbc4b") && !old.matchesNumericHash(tiny.numericHash))
    }

    /// Version 2 hashes the keys sorted: the order they are listed in does not matter.
    @Test func theNumericHashDoesNotDependOnTheOrderOfTheKeys() throws {
        let pairs = [("train.lr", "0.003"), ("model.layers", "4"), ("data.seq_len", "256")]
        let forward = RunConfig.numericHash(of: Dictionary(uniqueKeysWithValues: pairs))
        var reversed: [String: String] = [:]
        for (key, value) in pairs.reversed() { reversed[key] = value }
        #expect(forward == RunConfig.numericHash(of: reversed) && forward.hasPrefix("v\(RunConfig.numericHashVersion):"))
        #expect(forward != RunConfig.numericHash(of: ["train.lr": "0.003", "model.layers": "4", "data.seq_len": "128"]))
        #expect(forward != RunConfig.numericHash(of: ["train.lr": "0.003", "model.layers": "4"]))
    }

    @Test func theNumericHashIgnoresStepsLoggingThreadsAndEverythingOutsideModelDataTrain() throws {
        let base = try RunConfig(file: nil)
        let same = try base.applying(["train.steps=5", "train.log_every=3", "train.threads=2", "eval.every=7",
                                      "data.dir=/elsewhere", "run.dir=/r", "parallel.bucket_mb=1", "checkpoint.keep=1"])
        #expect(same.numericHash == base.numericHash && same.numericDifferences(from: base).isEmpty)
        let changed = try base.applying(["train.lr=1e-2", "data.seq_len=128"])
        #expect(changed.numericHash != base.numericHash)
        #expect(changed.numericDifferences(from: base) == ["data.seq_len: 256 → 128", "train.lr: 0.0003 → 0.01"])
    }

    // MARK: YAML

    @Test func yamlRoundTrips() throws {
        var config = try RunConfig(file: nil, overrides: ["model.tie_embeddings=true", "parallel.overlap=false", "train.lr=1.5e-3",
                                                          "model.d_model=96", "model.heads=3", "model.kv_heads=1", "train.seed=0"])
        config.data.dir = "data/it's \"quoted\": #not a comment\\ ünïcode\ttab"
        config.run.dir = "  spaced  "
        config.source = "checkpoint/run.yaml"
        let loaded = try RunConfig(resolvedYAML: config.yaml, source: "checkpoint/run.yaml")
        #expect(loaded == config)
        #expect(loaded.yaml == config.yaml)
    }

    /// A tiny.yaml run's run.yaml as the string-keyed RunConfig wrote it (189ab09).
    static let oldTinyRunYAML = """
        # resolved Tessera run config
        model:
          vocab_size: 256
          d_model: 192
          layers: 4
          heads: 6
          kv_heads: 2
          ffn_hidden: 512
          rope_theta: 10000.0
          norm_eps: 1e-05
          tie_embeddings: false
        data:
          dir: "data/shakespeare"
          seq_len: 128
        train:
          steps: 1000
          global_batch: 16
          seed: 1234
          lr: 0.002
          min_lr: 0.0002
          warmup_steps: 50
          beta1: 0.9
          beta2: 0.95
          eps: 1e-08
          weight_decay: 0.1
          grad_clip: 1.0
          log_every: 25
          threads: 1
        eval:
          every: 100
          batches: 16
        checkpoint:
          every: 200
          keep: 2
        parallel:
          data: 0
          sequence: 1
          bucket_mb: 4.0
          overlap: true
          timeout_seconds: 300.0
        run:
          dir: "runs/tiny"

        """

    /// An old run.yaml loads, and is written the same way but for the keys added since, at
    /// their defaults (the `attention:` section, `parallel.sequence_mode`).
    @Test func anOldRunYAMLLoadsAndIsWrittenTheSameWay() throws {
        let config = try RunConfig(resolvedYAML: Self.oldTinyRunYAML, source: "old/run.yaml")
        #expect(config.model.dModel == 192 && config.model.heads == 6 && config.model.kvHeads == 2 && config.model.normEps == 1e-5)
        #expect(config.data.dir == "data/shakespeare" && config.data.seqLen == 128)
        #expect(config.train.lr == 0.002 && config.train.minLr == 0.0002 && config.train.eps == 1e-8)
        #expect(config.checkpoint.every == 200 && config.run.dir == "runs/tiny" && config.source == "old/run.yaml")
        #expect(config.attention.kernel == "flash")
        // Written back with the keys added since (model.sequence_mixer, model.attention_layers,
        // model.ssm_chunk_size, attention.*, kernels.*, moe.*, parallel.sequence_mode,
        // parallel.expert, parallel.tcp_seal, train.micro_batch, train.precision, parallel.zero, parallel.reduction, checkpoint.keep_best, checkpoint.service, checkpoint.service_retry_seconds,
        // distill.*) at their defaults.
        #expect(config.parallel.sequenceMode == "ring")
        let attention = "attention:\n  kernel: \"flash\"\nkernels:\n  gemm: \"auto\"\n"
        let moe = "moe:\n  experts: 0\n  top_k: 2\n  expert_hidden: 384\n  capacity_factor: 0.0\n  aux_loss: 0.01\n  z_loss: 0.001\n  layers: \"all\"\n"
        let mixer = "  sequence_mixer: \"attention\"\n  attention_layers: \"\"\n  ssm_chunk_size: 64\n"
        let now = Self.oldTinyRunYAML.replacingOccurrences(of: "data:\n", with: attention + moe + "data:\n")
            .replacingOccurrences(of: "  tie_embeddings: false\n", with: "  tie_embeddings: false\n" + mixer)
            .replacingOccurrences(of: "  sequence: 1\n", with: "  sequence: 1\n  sequence_mode: \"ring\"\n  expert: 1\n")
            .replacingOccurrences(of: "  timeout_seconds: 300.0\n", with: "  timeout_seconds: 300.0\n  tcp_seal: \"auto\"\n")
            .replacingOccurrences(of: "  threads: 1\n", with: "  threads: 1\n  micro_batch: 0\n  precision: \"fp32\"\n")
            .replacingOccurrences(of: "  overlap: true\n", with: "  overlap: true\n  zero: 0\n  reduction: \"allreduce\"\n")
            .replacingOccurrences(of: "  keep: 2\n", with: "  keep: 2\n  keep_best: 0\n  service: \"\"\n  service_retry_seconds: 180.0\n")
            + "distill:\n  keep_attention: \"\"\n  chunk_size: 64\n  stage1_steps: 100\n  stage1_lr: 0.001\n  stage2_steps: 100\n"
            + "  stage2_lr: 0.001\n  stage3_steps: 200\n  stage3_lr: 0.0003\n  temperature: 1.0\n  data_loss_weight: 0.0\n"
            + "  stage3_train: \"all\"\n"
        #expect(config.yaml == now)
        #expect(config.checkpoint.service == "" && config.checkpoint.keepBest == 0)
        #expect(try RunConfig(resolvedYAML: now, source: "new/run.yaml").numericHash == config.numericHash)
    }

    // MARK: The attention kernel

    @Test func theAttentionKernelIsFlashByDefaultAndReachesEveryBlock() throws {
        #expect(try RunConfig(file: nil).modelConfig.blocks.allSatisfy { $0.sequenceMixer == .attention(
            AttentionSpec(heads: 4, kvHeads: 4, headDim: 64, ropeTheta: 10_000, kernel: .flash)) })
        let naive = try RunConfig(file: nil, overrides: ["attention.kernel=naive"])
        #expect(naive.modelConfig.blocks.allSatisfy {
            $0.sequenceMixer.attention?.kernel == .naive
        })
        #expect(naive.numericHash == RunConfig().numericHash, "a run may resume with the other kernel")
        let loaded = try RunConfig(resolvedYAML: naive.yaml, source: "run.yaml")
        #expect(loaded.attention.kernel == "naive")
    }

    @Test func anUnknownAttentionKernelNamesTheChoices() throws {
        let caught = error { _ = try RunConfig(file: nil, overrides: ["attention.kernel=fast"]) }
        #expect(caught == .outOfRange(key: "attention.kernel", value: "fast", rule: .oneOf(["flash", "naive"]), origin: .override))
        #expect(caught?.description == "--set: attention.kernel = fast must be one of flash, naive")
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let file = try write("attention:\n  kernel: Flash\n", "kernel.yaml", in: directory)
        #expect(error { _ = try RunConfig(file: file) }?.description == "\(file):2: attention.kernel = Flash must be one of flash, naive")
        #expect(error { _ = try RunConfig(file: nil, overrides: ["attention.kernal=naive"]) }
                == .unknownKey(key: "attention.kernal", suggestion: "attention.kernel", origin: .override))
        #expect(RunConfig.helpText.contains("attention.kernel") && RunConfig.helpText.contains("must be one of flash, naive"))
    }

    @Test func aBrokenRunYAMLNamesItsSource() {
        let caught = error { _ = try RunConfig(resolvedYAML: "train:\n  steps: [1\n", source: "ckpt/run.yaml") }
        guard case .invalidYAML(let file, let line, _)? = caught else { Issue.record("\(String(describing: caught))"); return }
        #expect(file == "ckpt/run.yaml" && line != nil)
        #expect(caught!.description.hasPrefix("ckpt/run.yaml:") && !caught!.description.contains("\n"))
    }

    // MARK: The field table

    @Test func helpTextListsEveryKeyWithTypeAndDefault() {
        let help = RunConfig.helpText
        for key in RunConfig.keyPaths {
            #expect(help.contains("  \(key) "), "\(key) missing from --help-config")
        }
        #expect(help.contains("train.global_batch") && help.contains("default 8 ") && help.contains("default \"runs/default\""))
        #expect(help.split(separator: "\n").count == RunConfig.keyPaths.count + 1)
    }

    @Test func keyPathsMatchTheEncodedSections() throws {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let object = try JSONSerialization.jsonObject(with: encoder.encode(RunConfig())) as? [String: [String: Any]]
        let encoded = (object ?? [:]).flatMap { section, keys in keys.keys.map { "\(section).\($0)" } }
        #expect(Set(encoded) == Set(RunConfig.keyPaths))
        #expect(encoded.count == RunConfig.keyPaths.count && Set(RunConfig.keyPaths).count == RunConfig.keyPaths.count)
        // The YAML lists the same keys, in table order.
        var section = "", written: [String] = []
        for line in RunConfig().yaml.split(separator: "\n") where !line.hasPrefix("#") {
            let name = line.trimmingCharacters(in: .whitespaces).prefix { $0 != ":" }
            if line.hasPrefix(" ") { written.append("\(section).\(name)") } else { section = String(name) }
        }
        #expect(written == RunConfig.keyPaths)
    }

    @Test func theCodableConformanceRoundTrips() throws {
        let config = try RunConfig(file: nil, overrides: ["train.lr=0.01", "run.dir=/tmp/x"])
        let decoded = try JSONDecoder().decode(RunConfig.self, from: JSONEncoder().encode(config))
        #expect(decoded == config)
    }

    @Test func modelConfigCarriesTheModelKeysAndTheSequenceLength() throws {
        let config = try RunConfig(file: nil, overrides: ["model.d_model=64", "model.heads=2", "model.kv_heads=1",
                                                          "model.norm_eps=1e-6", "data.seq_len=32", "model.tie_embeddings=true"])
        let model = config.modelConfig
        #expect(model.dModel == 64 && model.normEps == Float(1e-6) && model.maxSequenceLength == 32 && model.tieEmbeddings)
        #expect(model.layers == 4 && model.blocks.allSatisfy {
            $0 == BlockSpec(sequenceMixer: .attention(AttentionSpec(heads: 2, kvHeads: 1, headDim: 32, ropeTheta: 10_000)),
                            channelMixer: .swiGLU(hidden: 768))
        })
    }

    // MARK: Paths

    @Test func resolvingPathsMakesRelativeDirectoriesAbsolute() throws {
        var config = RunConfig()
        config.data.dir = "data/./x"
        config.run.dir = "../runs/y/"
        let resolved = config.resolvingPaths(against: "/base/configs")
        #expect(resolved.data.dir == "/base/configs/data/x" && resolved.run.dir == "/base/runs/y")
        config.data.dir = "/abs/data"
        #expect(config.resolvingPaths(against: "/base").data.dir == "/abs/data")
        let relative = config.resolvingPaths(against: "sub")
        #expect(relative.run.dir == URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent("runs/y").standardized.path)
        #expect(resolved.train == config.train && resolved.source == config.source)
    }

    @Test func validatedChecksSectionsChangedInCode() throws {
        var config = RunConfig()
        config.train.steps = 0
        #expect(error { _ = try config.validated() } == .outOfRange(key: "train.steps", value: "0", rule: .atLeastOne, origin: .defaults))
    }
}
