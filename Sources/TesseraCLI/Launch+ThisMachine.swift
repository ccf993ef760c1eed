import CollectivesTCP
import Foundation

extension Launch {
    /// Refuses a hostfile none of whose nodes is this machine: its launcher could only wait for
    /// ranks that never come (the example hostfile as shipped ends in "connection closed during
    /// handshake").
    func requireThisMachine(in file: Hostfile, path: String) throws {
        let machine = LocalAddresses.current()
        guard file.nodes(on: machine).isEmpty else { return }
        let hosts = file.nodes.map(\.host).joined(separator: ", ")
        let name = machine.hostName.isEmpty ? "" : " (\(machine.hostName))"
        throw TesseraError("hostfile \(path): no node is this machine: the nodes are \(hosts), and this machine\(name) has the addresses \(machine.addresses.joined(separator: ", ")); list this machine in it (an address or a name that resolves to one) and run one launcher per listed node")
    }
}
