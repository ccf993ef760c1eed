import Collectives
import Foundation
import Networking

/// The socket launcher's JSON hostfile: one entry per node, the master address and port, and
/// optionally the job token shared by every node's launcher.
///
/// ```json
/// {"master_addr": "10.0.0.1", "master_port": 29500, "token": "s3cret",
///  "nodes": [{"host": "10.0.0.1", "nproc": 2, "interface": "eth0"},
///            {"host": "10.0.0.2", "nproc": 2}]}
/// ```
public struct Hostfile: Equatable, Sendable {
    public struct Node: Equatable, Sendable {
        public var host: String
        public var nproc: Int
        public var interface: String?
    }

    public var masterAddress: String
    public var masterPort: UInt16
    public var token: String?
    public var nodes: [Node]

    public var worldSize: Int { nodes.reduce(0) { $0 + $1.nproc } }

    /// The first global rank of node `index`.
    public func rankOffset(node index: Int) -> Int { nodes[..<index].reduce(0) { $0 + $1.nproc } }

    public init(contentsOf path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CollectiveError.invalidArgument("hostfile \(path): cannot be read (missing file or no permission)")
        }
        try self.init(json: data, path: path)
    }

    public init(json data: Data, path: String) throws {
        func bad(_ what: String) -> CollectiveError {
            .invalidArgument("hostfile \(path): \(what); expected {\"master_addr\": ..., \"master_port\": ..., \"nodes\": [{\"host\": ..., \"nproc\": ...}]}")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data), let root = object as? [String: Any] else {
            throw bad("not a JSON object")
        }
        let known: Set<String> = ["master_addr", "master_port", "token", "nodes"]
        if let unknown = root.keys.first(where: { !known.contains($0) }) { throw bad("unknown key '\(unknown)'") }
        guard let nodeList = root["nodes"] as? [[String: Any]], !nodeList.isEmpty else { throw bad("key 'nodes' must be a non-empty list") }
        nodes = try nodeList.enumerated().map { index, entry in
            guard let host = entry["host"] as? String, !host.isEmpty else { throw bad("nodes[\(index)].host must be a host name or address") }
            guard let nproc = entry["nproc"] as? Int, nproc >= 1 else { throw bad("nodes[\(index)].nproc must be a whole number ≥ 1") }
            if let unknown = entry.keys.first(where: { !["host", "nproc", "interface"].contains($0) }) { throw bad("unknown key 'nodes[\(index)].\(unknown)'") }
            return Node(host: host, nproc: nproc, interface: entry["interface"] as? String)
        }
        if let addr = root["master_addr"] {
            guard let addr = addr as? String, !addr.isEmpty else { throw bad("key 'master_addr' must be a string") }
            masterAddress = addr
        } else {
            masterAddress = nodes[0].host
        }
        if let port = root["master_port"] {
            guard let port = port as? Int, (1...65535).contains(port) else { throw bad("key 'master_port' must be a port number (1-65535)") }
            masterPort = UInt16(port)
        } else {
            masterPort = 29500
        }
        token = root["token"] as? String
    }
}

extension Hostfile {
    /// Indices of the nodes whose host is this machine.
    public func nodes(on machine: LocalAddresses) -> [Int] {
        nodes.indices.filter { machine.contains(nodes[$0].host) }
    }
}
