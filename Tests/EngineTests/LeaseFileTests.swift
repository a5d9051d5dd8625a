#if canImport(Glibc)
import Glibc
#endif
import Testing
import VirtPortCore
@testable import Engine

@Suite struct LeaseFileTests {
    @Test func parsesLibvirtLeaseStatus() {
        let text = """
            [
              {
                "ip-address": "192.168.122.45",
                "mac-address": "52:54:00:AA:BB:01",
                "hostname": "vm1",
                "client-id": "01:52:54:00:aa:bb:01",
                "expiry-time": 1764410000
              },
              {
                "iaid": "1234",
                "ip-address": "fd00::45",
                "mac-address": "52:54:00:aa:bb:01",
                "expiry-time": 1764410001
              },
              { "ip-address": "garbage", "mac-address": "52:54:00:aa:bb:02" }
            ]
            """
        let leases = DnsmasqStatus.leases(Array(text.utf8))
        #expect(leases.count == 2)
        #expect(leases[0] == .init(address: IPAddress("192.168.122.45")!, mac: MACAddress("52:54:00:aa:bb:01")!, expiry: 1764410000))
        #expect(leases[1].address == IPAddress("fd00::45"))
        #expect(DnsmasqStatus.leases(Array("[]".utf8)).isEmpty)
    }
}
