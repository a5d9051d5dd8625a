import Foundation
import Testing
@testable import Netfilter
import VirtPortCore

/// `table bridge virtport` against the real kernel, each test in its own network namespace.
@Suite("bridge guard table in a netns", .enabled(if: isRoot, "needs root: creates network namespaces"))
struct GuardKernelTests {
    static let a = GuardPort(tap: "vnet0", mac: MACAddress("52:54:00:aa:bb:01")!,
                             addresses: [ip("192.168.122.10"), ip("fd00:122::10")], spoofing: true,
                             dhcpServer: false, routerAdvert: false)
    static let b = GuardPort(tap: "vnet1", mac: MACAddress("52:54:00:aa:bb:02")!, addresses: [],
                             spoofing: false, dhcpServer: true, routerAdvert: false)

    @Test func buildsChangesAndReadsBack() throws {
        try withNetNS("guard") { ns in
            let nf = try ns.session()
            try nf.replaceGuards([Self.a])
            #expect(try nf.guardTableDamage(expecting: [Self.a]) == nil)
            let text = try ns.nft("list table bridge virtport").stdout
            #expect(text.contains(#""vnet0" . 52:54:00:aa:bb:01"#))
            #expect(text.contains(#""vnet0" . 192.168.122.10"#))
            #expect(text.contains(#"counter name iifname map @drop_mac drop"#))
            // b added, a's IPv4 address moves: one batch.
            var moved = Self.a
            moved.addresses = [ip("192.168.122.11"), ip("fd00:122::10")]
            try nf.changeGuards(adding: [moved, Self.b], previous: [Self.a], removing: [])
            let after = try ns.nft("list table bridge virtport").stdout
            #expect(after.contains(#""vnet0" . 192.168.122.11"#) && !after.contains("192.168.122.10"))
            #expect(after.contains(#"elements = { "vnet1" }"#))
            #expect(try nf.guardTableDamage(expecting: [moved, Self.b]) == nil)
            #expect(try nf.guardCounters().count == 2 * GuardDropReason.allCases.count)
            // b goes with its counters.
            try nf.changeGuards(adding: [], previous: [], removing: [Self.b])
            #expect(try nf.guardCounters().map(\.tap).allSatisfy { $0 == "vnet0" })
            #expect(try nf.guardTableDamage(expecting: [Self.b]) == "table bridge virtport has elements of port vnet1 missing")
            _ = try ns.nft("flush chain bridge virtport ip4")
            #expect(try nf.guardTableDamage(expecting: [moved]) == "table bridge virtport has chains or rules missing")
            try nf.deleteGuardTable()
            #expect(try nf.guardTableDamage(expecting: []) == "table bridge virtport is missing")
            #expect(try nf.guardCounters().isEmpty)
            // A removal of something absent says so (the caller rebuilds).
            #expect(throws: NetfilterError.self) { try nf.changeGuards(adding: [], previous: [], removing: [Self.a]) }
        }
    }

    /// Link-locals the data path learned (DAD claims: dynamic elements of ip6 and ll_N) survive a
    /// rebuild of the table for the same tap and MAC, and go with the port or with its MAC.
    @Test func learnedLinkLocalsLiveAsLongAsThePort() throws {
        try withNetNS("guardll") { ns in
            let nf = try ns.session()
            try nf.replaceGuards([Self.a])
            let eui = "fe80::5054:ff:feaa:bb01"
            #expect(try ns.nft("list set bridge virtport ipv6").stdout.contains(#""vnet0" . 52:54:00:aa:bb:01 . \#(eui)"#))
            _ = try ns.nft(#"add element bridge virtport ipv6 { "vnet0" . 52:54:00:aa:bb:01 . fe80::1234:5678:9abc:def0 }"#)
            _ = try ns.nft(#"add element bridge virtport ll_1 { "vnet0" . 52:54:00:aa:bb:01 }"#)
            _ = try ns.nft(#"add element bridge virtport taken6 { fe80::1234:5678:9abc:def0 }"#)
            try nf.replaceGuards([Self.a, Self.b])
            #expect(try ns.nft("list set bridge virtport ipv6").stdout.contains("fe80::1234:5678:9abc:def0"))
            #expect(try ns.nft("list set bridge virtport ll_1").stdout.contains("vnet0"))
            #expect(try ns.nft("list set bridge virtport taken6").stdout.contains("fe80::1234:5678:9abc:def0"))
            // Same tap, another MAC (it changed hands): what the previous holder claimed goes.
            var other = Self.a
            other.mac = MACAddress("52:54:00:aa:bb:03")!
            try nf.changeGuards(adding: [other], previous: [Self.a], removing: [])
            #expect(try !ns.nft("list set bridge virtport ipv6").stdout.contains("fe80::1234:5678:9abc:def0"))
            #expect(try !ns.nft("list set bridge virtport ll_1").stdout.contains("vnet0"))
            #expect(try !ns.nft("list set bridge virtport taken6").stdout.contains("fe80::1234:5678:9abc:def0"))
            #expect(try ns.nft("list set bridge virtport taken6").stdout.contains("fe80::5054:ff:feaa:bb03"))
            #expect(try nf.guardTableDamage(expecting: [other, Self.b]) == nil)
            _ = try ns.nft(#"add element bridge virtport ipv6 { "vnet0" . 52:54:00:aa:bb:03 . fe80::1 }"#)
            try nf.changeGuards(adding: [], previous: [], removing: [other])
            #expect(try !ns.nft("list set bridge virtport ipv6").stdout.contains("vnet0"))
        }
    }
}
