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

    @Test func halfWrittenOrGarbageFilesTellNothing() {
        let whole = #"[ { "ip-address": "192.168.122.61", "mac-address": "52:54:00:aa:bb:01", "expiry-time": 0 } ]"#
        #expect(DnsmasqStatus.complete(Array(whole.utf8))?.map(\.address) == [IPAddress("192.168.122.61")!])
        // Cut anywhere: not a lease list (a cut inside an address could read as a valid, wrong one).
        for n in stride(from: 1, to: whole.utf8.count - 1, by: 7) {
            #expect(DnsmasqStatus.complete(Array(whole.utf8.prefix(n))) == nil)
        }
        #expect(DnsmasqStatus.complete(Array("\u{0}\u{1}garbage".utf8)) == nil)
        #expect(DnsmasqStatus.complete(Array(#"[{"ip-address": "1.2.3", "mac-address": "52:54:00:aa:bb:01"}]"#.utf8)) == nil)
        #expect(DnsmasqStatus.complete(Array("[]".utf8)) == [])
        // libvirt creates the file empty when it starts a network: no leases yet, not garbage.
        #expect(DnsmasqStatus.complete([]) == [])
        #expect(DnsmasqStatus.current(Array("\n".utf8), now: 0) == [:])
        // A DHCPv6 lease without a MAC is skipped, not garbage; expired leases are not current.
        let v6 = #"[{"ip-address": "fd00::5", "iaid": "1"}, {"ip-address": "192.168.122.7", "mac-address": "52:54:00:aa:bb:02", "expiry-time": 100}]"#
        #expect(DnsmasqStatus.complete(Array(v6.utf8))?.count == 1)
        #expect(DnsmasqStatus.current(Array(v6.utf8), now: 200) == [:])
        #expect(DnsmasqStatus.current(Array(v6.utf8), now: 50) == [MACAddress("52:54:00:aa:bb:02")!: [IPAddress("192.168.122.7")!]])
    }
}
