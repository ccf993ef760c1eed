import Checkpointing
import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension CheckpointServer {
    func finalURL(_ step: Int) -> URL { root.appendingPathComponent(CheckpointLayout.directoryName(step: step)) }
    func assemblyURL(_ step: Int) -> URL { root.appendingPathComponent(CheckpointLayout.partialName(step: step)) }
    func manifestsURL(_ step: Int) -> URL { root.appendingPathComponent(".\(CheckpointLayout.directoryName(step: step)).parts") }
    /// Where the files of parts still arriving are written (`ID-NAME`, ID the connection's), out
    /// of the assembly, so a commit can never pick one up.
    func incomingURL(_ step: Int) -> URL { root.appendingPathComponent(".\(CheckpointLayout.directoryName(step: step)).incoming") }

    /// Complete checkpoints under the root, oldest first.
    public func completeSteps() -> [StepInfo] {
        CheckpointStore(root: root).complete().map { entry in
            let names = (try? FileManager.default.contentsOfDirectory(atPath: entry.url.path)) ?? []
            let bytes = names.reduce(0) { sum, name in
                sum + (((try? FileManager.default.attributesOfItem(atPath: entry.url.appendingPathComponent(name).path))?[.size] as? Int) ?? 0)
            }
            return StepInfo(step: entry.step, validationLoss: CheckpointStore.validationLoss(of: entry.url), bytes: bytes)
        }
    }

    static let assemblySuffixes = [".partial", ".parts", ".incoming"]

    /// Steps with an assembly, manifest or incoming directory (`.step-N.partial`, `.step-N.parts`,
    /// `.step-N.incoming`; only names `CheckpointLayout` writes for a step in range).
    func stepsInAssembly() -> Set<Int> {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return Set(names.compactMap { name in
            Self.assemblySuffixes.lazy.compactMap { CheckpointLayout.step(ofHidden: name, suffix: $0) }.first
        })
    }

    /// Acknowledged parts of `step`, by rank: every `rank-R.json` bounded, decoded and
    /// validated like a part from a peer, of this step and rank R, all agreeing on the number of
    /// ranks. Anything else throws `invalidPart` naming the file and what is wrong.
    func manifests(_ step: Int) throws -> [Int: PartHeader] {
        let dir = manifestsURL(step)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        guard names.count <= ServiceLimits.maxRanks else {
            throw CheckpointServiceError.invalidPart(reason: "\(dir.path) holds \(names.count) entries, over the \(ServiceLimits.maxRanks)-rank limit")
        }
        var result: [Int: PartHeader] = [:]
        for name in names {
            let url = dir.appendingPathComponent(name)
            let size = (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) ?? 0
            guard size <= ServiceLimits.maxJSONBytes, let data = FileManager.default.contents(atPath: url.path) else {
                throw CheckpointServiceError.invalidPart(reason: "manifest \(url.path) is unreadable or over the \(ServiceLimits.maxJSONBytes)-byte limit")
            }
            let header = try PartHeader.decode(data, from: "manifest \(url.path)")
            guard header.step == step, name == "rank-\(header.rank).json", (result.first?.value.ranks ?? header.ranks) == header.ranks else {
                throw CheckpointServiceError.invalidPart(reason: "manifest \(url.path) holds step \(header.step) rank \(header.rank) of \(header.ranks), not a part of step \(step) agreeing with the others")
            }
            result[header.rank] = header
        }
        return result
    }

    /// With the lock held: moves what `step` left under the root (assembly, manifests, incoming)
    /// aside into `.rejected/`, where nothing reads it, and logs one line naming it and why.
    func moveAside(_ step: Int, because error: Error) {
        let fm = FileManager.default
        let aside = root.appendingPathComponent(".rejected").appendingPathComponent("\(CheckpointLayout.directoryName(step: step))-\(Int(Date().timeIntervalSince1970))")
        try? fm.createDirectory(at: aside, withIntermediateDirectories: true)
        for url in [assemblyURL(step), manifestsURL(step), incomingURL(step)] where fm.fileExists(atPath: url.path) {
            if (try? fm.moveItem(at: url, to: aside.appendingPathComponent(url.lastPathComponent))) == nil { try? fm.removeItem(at: url) }
        }
        log("moved step \(step)'s unfinished state aside to \(aside.path): \(error)")
    }

    func removeAssembly(_ step: Int) {
        try? FileManager.default.removeItem(at: assemblyURL(step))
        try? FileManager.default.removeItem(at: manifestsURL(step))
        try? FileManager.default.removeItem(at: incomingURL(step))
    }

    /// Called with the lock held: what a previous run left. State that fails the checks a part
    /// from a peer must pass (`manifests`) is moved aside (`moveAside`), and the service serves. Steps at or below the newest
    /// complete one are dropped; half-committed steps (`DONE` in the assembly) are finished if
    /// they verify; steps whose parts all arrived are committed; parts still arriving when it
    /// stopped (`.step-N.incoming`, files of no acknowledged part) are deleted; `.step-N.replaced`
    /// (a replacement of step N, by whatever committed into this root, cut short) is deleted, or
    /// restored when it is the only copy of step N (`CheckpointCommit.recoverReplaced`).
    func recover() throws {
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: root.path)) ?? [] where name.hasSuffix(".deleting") {
            try? fm.removeItem(at: root.appendingPathComponent(name))
        }
        CheckpointCommit.recoverReplaced(root: root).forEach(log)
        for step in stepsInAssembly().sorted() {
            try? fm.removeItem(at: incomingURL(step))
            let assembly = assemblyURL(step)
            guard fm.fileExists(atPath: assembly.appendingPathComponent(CheckpointLayout.done).path) else { continue }
            // `CheckpointCommit` writes DONE after checksums.json and before the rename.
            if !fm.fileExists(atPath: finalURL(step).path), (try? CheckpointStore.verifyChecksums(assembly)) != nil {
                try DurableFiles.rename(assembly, to: finalURL(step))
                log("finished committing step \(step), interrupted by the previous run")
            }
            removeAssembly(step)
        }
        let newest = completeSteps().last?.step ?? -1
        for step in stepsInAssembly().sorted() {
            if step <= newest {
                removeAssembly(step)
                log("removed the unfinished step \(step): step \(newest) is complete")
                continue
            }
            let parts: [Int: PartHeader]
            do { parts = try manifests(step) } catch {
                moveAside(step, because: error)
                continue
            }
            let listed = Set(parts.values.flatMap { $0.files.map(\.name) })
            let assembly = assemblyURL(step)
            for name in (try? fm.contentsOfDirectory(atPath: assembly.path)) ?? [] where !listed.contains(name) {
                try? fm.removeItem(at: assembly.appendingPathComponent(name))
            }
            if let ranks = parts.values.first?.ranks, Self.isComplete(parts, ranks: ranks) {
                do { try commit(step, parts) } catch let error as CheckpointServiceError {
                    log("\(error)")   // a step that can never be committed was removed; the others go on
                }
            } else {
                log("step \(step): parts of ranks \(parts.keys.sorted()) kept; waiting for the others")
            }
        }
    }

    /// Called with the lock held once every rank's part of `step` is durable: the acknowledged
    /// files (and nothing else) committed by `CheckpointCommit`, older unfinished steps removed,
    /// retention applied. Parts that do not make a checkpoint (rank 0's metadata missing, a file
    /// the index names that no rank sent) can never be committed: the step is removed and the
    /// error is `invalidPart` naming what is missing. A failed write throws and keeps the step.
    func commit(_ step: Int, _ parts: [Int: PartHeader]) throws {
        let listed = Set(parts.values.flatMap { $0.files.map(\.name) })
        let assembly = assemblyURL(step)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: assembly.path)) ?? [] where !listed.contains(name) {
            try? FileManager.default.removeItem(at: assembly.appendingPathComponent(name))
        }
        let final: URL
        do {
            // Every file's bytes matched its part's SHA-256 as they arrived (`receiveFile`).
            let sums = Dictionary(parts.values.flatMap { $0.files.map { ($0.name, $0.sha256) } }, uniquingKeysWith: { first, _ in first })
            final = try CheckpointCommit.commit(partial: assembly, root: root, step: step, knownSums: sums)
        } catch let error as CheckpointError {
            if case .writeFailed = error { throw error }
            removeAssembly(step)
            throw CheckpointServiceError.invalidPart(reason: "step \(step) cannot be committed and was removed: \(error)")
        }
        try? FileManager.default.removeItem(at: manifestsURL(step))
        // A redelivered part still arriving keeps the incoming directory (it removes it when it
        // is acknowledged); a later commit or a restart clears what a dropped one left.
        rmdir(incomingURL(step).path)
        log("committed step \(step) (\(parts.count) part(s), \(listed.count) files) as \(final.path)")
        for older in stepsInAssembly() where older < step {
            removeAssembly(older)
            log("removed the unfinished step \(older): step \(step) is complete")
        }
        for deleted in retention.apply(root: root) {
            log("retention: deleted step \(CheckpointLayout.step(ofDirectory: deleted.lastPathComponent).map(String.init) ?? deleted.lastPathComponent)")
        }
    }
}
