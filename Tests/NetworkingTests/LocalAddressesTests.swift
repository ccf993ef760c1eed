import Testing
import Networking
import Foundation

@Suite struct LocalAddressesTests {
    let machine = LocalAddresses.current()

    @Test func loopbackAndTheHostNameAreThisMachine() {
        #expect(machine.addresses.contains("127.0.0.1"))
        #expect(machine.contains("127.0.0.1") && machine.contains("localhost"))
        #expect(machine.hostName.isEmpty || machine.contains(machine.hostName))
        for address in machine.addresses { #expect(machine.contains(address)) }
    }

    @Test func otherAddressesAndUnknownNamesAreNot() throws {
        let other = try #require(["203.0.113.77", "198.51.100.77", "10.255.255.77"].first { !machine.addresses.contains($0) })
        #expect(!machine.contains(other))
        #expect(!machine.contains("no-such-node.invalid"))
    }
}
