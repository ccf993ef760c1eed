/// Errors raised by the executable itself (what the argument parser cannot see); each names
/// the file, option or rank and what to change, in one line.
enum CommandLineError: Error, Equatable, CustomStringConvertible {
    case metricsUnreadable(path: String)
    case metricsLineInvalid(path: String, line: Int)
    case metricsEmpty(path: String)
    case nothingToResume(runDirectory: String, checkpoints: String)
    case nodeRankOutOfRange(nodeRank: Int, hostfile: String, nodes: Int)
    case nprocDisagreesWithHostfile(nproc: Int, hostfile: String, nodeRank: Int, hostfileNproc: Int)
    case missingJobToken(hostfile: String)
    case hostfileLacksThisMachine(hostfile: String, hosts: [String], machine: String, addresses: [String])
    case rankStartFailed(rank: Int, reason: String)
    case benchNeedsSeveralRanks(bench: String)
    case selftestMissedAStoppedRank(rank: Int)
    case topKAboveVocabulary(topK: Int, vocabulary: Int)
    case noSuchCheckpoint(runDirectory: String, step: Int, available: [String])
    case resumeThroughServiceNeedsConfig(runDirectory: String)
    case nothingToVerify(root: String, note: String)
    case serviceCannotListen(listen: String, cause: String)
    case logitsNeedOneProcess(ranks: Int)
    case logitsTooLarge(path: String, sequences: Int, length: Int, vocab: Int, mebibytes: Double, limit: Int)

    var description: String {
        switch self {
        case let .metricsUnreadable(path):
            return "\(path) cannot be read; pass the run.dir of a training run"
        case let .metricsLineInvalid(path, line):
            return "\(path) line \(line) is not a metrics record; was the file edited or truncated?"
        case let .metricsEmpty(path):
            return "\(path) holds no training steps yet"
        case let .nothingToResume(runDirectory, checkpoints):
            return "--resume \(runDirectory): no complete checkpoint under \(checkpoints); pass --config to start it, or check the path"
        case let .nodeRankOutOfRange(nodeRank, hostfile, nodes):
            return "--node-rank \(nodeRank) is not in hostfile \(hostfile), which lists \(nodes) node(s) (0...\(nodes - 1))"
        case let .nprocDisagreesWithHostfile(nproc, hostfile, nodeRank, hostfileNproc):
            return "--nproc \(nproc) disagrees with hostfile \(hostfile): nodes[\(nodeRank)].nproc = \(hostfileNproc)"
        case let .missingJobToken(hostfile):
            return "a multi-node launch needs a job token shared by every node: add \"token\" to \(hostfile) or export TESSERA_JOB_TOKEN"
        case let .hostfileLacksThisMachine(hostfile, hosts, machine, addresses):
            let name = machine.isEmpty ? "" : " (\(machine))"
            return "hostfile \(hostfile): no node is this machine: the nodes are \(hosts.joined(separator: ", ")), and this machine\(name) has the addresses \(addresses.joined(separator: ", ")); list this machine in it (an address or a name that resolves to one) and run one launcher per listed node"
        case let .rankStartFailed(rank, reason):
            return "tessera launch: could not start rank \(rank): \(reason)"
        case let .benchNeedsSeveralRanks(bench):
            return "bench \(bench) measures traffic between ranks and this job has one; run it under `scripts/mpirun.sh 2 bench \(bench)` or `tessera launch --nproc 2 -- bench \(bench)`"
        case let .topKAboveVocabulary(topK, vocabulary):
            return "--top-k \(topK) is more than the \(vocabulary) tokens of this model's vocabulary (0 means all of them)"
        case let .noSuchCheckpoint(runDirectory, step, available):
            return "--resume \(runDirectory) --step \(step): no complete checkpoint of step \(step) under \(runDirectory)/checkpoints; "
                + (available.isEmpty ? "it holds none" : "its complete checkpoints are of step\(available.count == 1 ? "" : "s") \(available.joined(separator: ", "))")
        case let .resumeThroughServiceNeedsConfig(runDirectory):
            return "--resume \(runDirectory) with checkpoint.service: the run's checkpoints (and its config) are on the service; pass the config it started with too: --config FILE --resume \(runDirectory) --set checkpoint.service=HOST:PORT"
        case let .nothingToVerify(root, note):
            return "\(root) holds no complete checkpoint to verify\(note)"
        case let .serviceCannotListen(listen, cause):
            return "--listen \(listen): cannot listen there (\(cause)); choose another --listen (a free port, on an address of this machine)"
        case let .logitsNeedOneProcess(ranks):
            return "--logits writes from one process and this job has \(ranks) ranks; run tessera eval --logits alone (without mpirun or tessera launch)"
        case let .logitsTooLarge(path, sequences, length, vocab, mebibytes, limit):
            return "--logits \(path): \(sequences) sequences × \(length) positions × \(vocab) tokens of float32 would be "
                + String(format: "%.0f", mebibytes) + " MiB, over the \(limit) MiB limit; pass fewer --batches"
        case let .selftestMissedAStoppedRank(rank):
            return "rank \(rank) stopped but the allreduce completed without it"
        }
    }
}
