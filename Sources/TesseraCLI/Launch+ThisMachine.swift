import CollectivesTCP
import Foundation
import Networking

extension Launch {
    /// Refuses a hostfile none of whose nodes is this machine: its launcher could only wait for
    /// ranks that never come (the example hostfile as shipped ends in "connection closed during
    /// handshake").
    func requireThisMachine(in file: Hostfile, path: String) throws {
        let machine = LocalAddresses.current()
        guard file.nodes(on: machine).isEmpty else { return }
        throw CommandLineError.hostfileLacksThisMachine(hostfile: path, hosts: file.nodes.map(\.host), machine: machine.hostName,
                                                        addresses: machine.addresses)
    }
}
