import Testing
import CollectivesTCP
import Foundation
import Networking

/// Which nodes of a hostfile are this machine (`tessera launch --hostfile` starts only those).
@Suite struct HostfileNodesTests {
    let machine = LocalAddresses.current()

    @Test func aHostfileNamesTheNodesOnThisMachine() throws {
        let other = try #require(["203.0.113.77", "198.51.100.77"].first { !machine.addresses.contains($0) })
        let json = #"{"nodes": [{"host": "\#(other)", "nproc": 2}, {"host": "127.0.0.1", "nproc": 1}]}"#
        let file = try Hostfile(json: Data(json.utf8), path: "hosts.json")
        #expect(file.nodes(on: machine) == [1])
        #expect(file.nodes(on: LocalAddresses(addresses: [other], hostName: "elsewhere")) == [0])
    }
}
