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

/// Issue 21 item 8: the compact parse, the agent's diff, and the per-plan index.
@Suite struct LeaseCompactTests {
    static func file(_ leases: [(String, String)]) -> [UInt8] {
        Array(("[" + leases.map { #"{"ip-address": "\#($0.1)", "mac-address": "\#($0.0)", "expiry-time": 0}"# }
            .joined(separator: ",\n") + "]").utf8)
    }

    @Test func compactKeepsAddressAndMAC() throws {
        let all = try #require(DnsmasqStatus.compact(Self.file([("52:54:00:AA:bb:01", "192.168.122.5"),
                                                                ("52:54:00:aa:bb:02", "fd00::5")])))
        #expect(all.map(\.macAddress) == [MACAddress("52:54:00:aa:bb:01")!, MACAddress("52:54:00:aa:bb:02")!])
        #expect(all.map(\.address) == [IPAddress("192.168.122.5")!, IPAddress("fd00::5")!])
        // A hostname with braces, commas and escaped quotes inside its string does not confuse it.
        let odd = #"[{"hostname": "a{b},c\"d", "ip-address": "10.0.0.2", "mac-address": "52:54:00:aa:bb:03"}]"#
        #expect(DnsmasqStatus.compact(Array(odd.utf8))?.first?.address == IPAddress("10.0.0.2"))
    }

    @Test func agentDiffNamesOnlyMovedOrNewMACs() throws {
        let before = try #require(DnsmasqStatus.currentSorted(Self.file([("52:54:00:aa:bb:01", "10.0.0.1"),
                                                                          ("52:54:00:aa:bb:02", "10.0.0.2"),
                                                                          ("52:54:00:aa:bb:03", "10.0.0.3")]), now: 0))
        let now = try #require(DnsmasqStatus.currentSorted(Self.file([("52:54:00:aa:bb:03", "10.0.0.3"),
                                                                       ("52:54:00:aa:bb:02", "10.0.0.9"),
                                                                       ("52:54:00:aa:bb:04", "10.0.0.4")]), now: 0))
        let changed = DnsmasqStatus.changedMACs(before: before, now: now)
        let key = { (m: String) in DnsmasqStatus.Compact.key(MACAddress(m)!) }
        #expect(changed == [key("52:54:00:aa:bb:01"), key("52:54:00:aa:bb:02"), key("52:54:00:aa:bb:04")])
        // bb:01 vanished: the watcher keeps only MACs that still hold a lease.
        #expect(!DnsmasqStatus.holds(sorted: now, mac: key("52:54:00:aa:bb:01")))
        #expect(DnsmasqStatus.holds(sorted: now, mac: key("52:54:00:aa:bb:04")))
    }

    @Test func indexAnswersByMACAndAddressAndSkipsExpired() throws {
        let text = #"[{"ip-address": "10.0.0.1", "mac-address": "52:54:00:aa:bb:01", "expiry-time": 100},"#
            + #"{"ip-address": "10.0.0.2", "mac-address": "52:54:00:aa:bb:01", "expiry-time": 300},"#
            + #"{"ip-address": "10.0.0.2", "mac-address": "52:54:00:aa:bb:02", "expiry-time": 0}]"#
        let index = LeaseIndex(try #require(DnsmasqStatus.compact(Array(text.utf8))), now: 200)
        #expect(index.leases(of: MACAddress("52:54:00:aa:bb:01")!).map(\.address) == [IPAddress("10.0.0.2")!])
        #expect(index.holders(of: IPAddress("10.0.0.2")!) == [MACAddress("52:54:00:aa:bb:01")!, MACAddress("52:54:00:aa:bb:02")!])
        #expect(index.holders(of: IPAddress("10.0.0.1")!) == [])
    }
}
