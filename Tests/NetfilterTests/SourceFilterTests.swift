import Foundation
import Testing
@testable import Netfilter
import VirtPortCore

private func prefix(_ text: String) -> IPPrefix {
    if let p = IPPrefix(parsing: text) { return p }
    let a = IPAddress(text)!
    return IPPrefix(a, prefix: a.bytes.count * 8)
}

private func filter(_ proto: IPProto = .tcp, host: String? = nil, dev: String? = nil, _ ports: PortRange,
                    _ prefixes: [String]) -> SourceFilterElement {
    SourceFilterElement(proto: proto, hostAddress: host.map { IPAddress($0)! }, dev: dev, ports: ports,
                        prefixes: prefixes.map(prefix))
}

@Suite("source filter encoding")
struct SourceFilterEncodingTests {
    @Test func keysAreIntervalsOverTheForwardAndThePrefix() {
        let f = filter(.tcp, PortRange(8080, 8090), ["10.0.0.0/8", "2001:db8:5::/48"])
        let e = SourceFilterTable.elements(f)
        // No host address: both families, one drop entry each.
        #expect(e.drops.map(\.counter) == ["tcp4_8080_8090", "tcp6_8080_8090"])
        let v4 = e.drops[0]
        // dport . l4proto . daddr
        #expect(v4.start == [0x1f, 0x90, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0])
        #expect(v4.end == [0x1f, 0x9a, 0, 0, 6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
        #expect(e.allows.count == 2)
        // saddr first
        #expect(e.allows[0].start.prefix(4) == [10, 0, 0, 0])
        #expect(e.allows[0].end.prefix(4) == [10, 255, 255, 255])
        #expect(Array(e.allows[0].start.dropFirst(4)) == v4.start)
        #expect(e.allows[1].start.count == 16 + 4 + 4 + 16)
        #expect(Array(e.allows[1].end.prefix(16)) == [0x20, 0x01, 0x0d, 0xb8, 0, 5] + [UInt8](repeating: 0xff, count: 10))
    }

    @Test func hostAddressAndDeviceNarrowTheKey() {
        let f = filter(.udp, host: "203.0.113.5", dev: "eth0", PortRange(53, 53), ["198.51.100.7"])
        let e = SourceFilterTable.elements(f)
        #expect(e.drops.map(\.counter) == ["udp4_53_eth0_cb007105"])
        #expect(e.drops[0].variant.hasDev)
        #expect(e.drops[0].start == e.drops[0].end)
        #expect(Array(e.drops[0].start[8..<12]) == Array("eth0".utf8))
        #expect(e.allows.count == 1)
        #expect(e.allows[0].start == e.allows[0].end)  // a bare address is a /32
    }

    @Test func coveredAndDuplicatePrefixesAreLeftOutOfTheKernel() {
        let f = filter(.tcp, PortRange(22, 22), ["10.1.0.0/16", "10.0.0.0/8", "10.0.0.0/8", "192.0.2.1"])
        #expect(f.kernelPrefixes(.ipv4).map(\.description) == ["10.0.0.0/8", "192.0.2.1/32"])
        #expect(f.kernelPrefixes(.ipv6).isEmpty)
    }

    @Test func portSetsAreTheMergedUnionOfEveryFilter() {
        let a = filter(.tcp, host: "192.0.2.1", PortRange(8080, 8080), ["10.0.0.0/8"])
        let b = filter(.udp, host: "192.0.2.2", PortRange(8080, 8090), ["10.0.0.0/8"])
        let c = filter(.tcp, PortRange(8091, 8091), ["2001:db8::/32"])
        #expect(SourceFilterTable.ports([a, b, c], .ipv4) == [PortRange(8080, 8091)])
        #expect(SourceFilterTable.ports([a, b, c], .ipv6) == [PortRange(8091, 8091)])
        // a goes: b keeps 8080 in the merged range, so no port interval changes.
        var batch = NetlinkBatch(firstSequence: 1, scratch: ScratchBuffer())
        SourceFilterTable.appendPortChange(to: &batch, table: "t", before: [a, b, c], after: [b, c], deleting: true)
        SourceFilterTable.appendPortChange(to: &batch, table: "t", before: [a, b, c], after: [b, c], deleting: false)
        #expect(batch.messages.isEmpty)
        // c goes: 8091 leaves both families' sets, 8080-8090 comes in for v4 in its place.
        SourceFilterTable.appendPortChange(to: &batch, table: "t", before: [a, b, c], after: [a, b], deleting: true)
        SourceFilterTable.appendPortChange(to: &batch, table: "t", before: [a, b, c], after: [a, b], deleting: false)
        #expect(batch.messages.map { $0.operation.describe(element: nil) }
                == ["delete ports in set ports4 of table inet t", "delete ports in set ports6 of table inet t",
                    "add ports in set ports4 of table inet t"])
    }

    @Test func aChangedListOnlyMovesAllowIntervals() throws {
        let transport = RecordingTransport()
        let nf = try NetfilterSession(table: "virtport", transport: transport, firstSequence: 1)
        let old = filter(.tcp, host: "192.0.2.1", PortRange(80, 80), ["10.0.0.0/8", "172.16.0.0/12"])
        var new = old
        new.prefixes = [prefix("10.0.0.0/8"), prefix("192.168.0.0/16")]
        var batch = NetlinkBatch(firstSequence: 1, scratch: ScratchBuffer())
        SourceFilterTable.appendChange(to: &batch, table: "virtport_src", from: [old], to: [new], allBefore: [old], allAfter: [new])
        let operations = batch.messages.map { $0.operation.describe(element: nil) }
        #expect(operations == ["delete elements in set allow4 of table inet virtport_src",
                               "add elements to set allow4 of table inet virtport_src"])
        _ = nf
    }
}

@Suite("source filter: which open connections a list cuts")
struct SourceFilterCutTests {
    func flow(_ source: String, _ destination: String, _ proto: UInt8 = 6, port: UInt16) -> Conntrack.Tuple {
        Conntrack.Tuple(source: IPAddress(source)!, destination: IPAddress(destination)!, proto: proto,
                        sourcePort: 40000, destinationPort: port)
    }

    @Test func aForwardsConnectionFromAClientItsListDoesNotHoldIsCut() {
        let any = filter(.tcp, PortRange(2222, 2230), ["203.0.113.0/24", "2001:db8:1::2"])
        #expect(SourceFilterTable.cuts(flow("198.51.100.7", "203.0.113.1", port: 2222), [any]))
        #expect(SourceFilterTable.cuts(flow("2001:db8:1::3", "2001:db8:1::1", port: 2230), [any]))
        // Listed clients, another port, another protocol: not this filter's to cut.
        #expect(!SourceFilterTable.cuts(flow("203.0.113.9", "203.0.113.1", port: 2222), [any]))
        #expect(!SourceFilterTable.cuts(flow("2001:db8:1::2", "2001:db8:1::1", port: 2222), [any]))
        #expect(!SourceFilterTable.cuts(flow("198.51.100.7", "203.0.113.1", port: 2231), [any]))
        #expect(!SourceFilterTable.cuts(flow("198.51.100.7", "203.0.113.1", 17, port: 2222), [any]))
        // The host's own connection (output: source and destination the same address) is not judged.
        #expect(!SourceFilterTable.cuts(flow("203.0.113.1", "203.0.113.1", port: 2222), [any]))
        // With address=, only connections to that address.
        let one = filter(.udp, host: "192.0.2.1", PortRange(5353, 5353), ["10.0.0.0/8"])
        #expect(SourceFilterTable.cuts(flow("192.0.2.77", "192.0.2.1", 17, port: 5353), [one]))
        #expect(!SourceFilterTable.cuts(flow("192.0.2.77", "192.0.2.2", 17, port: 5353), [one]))
        // A list without IPv6 prefixes holds no IPv6 client of a forward without address=.
        let v4only = filter(.tcp, PortRange(22, 22), ["10.0.0.0/8"])
        #expect(SourceFilterTable.cuts(flow("2001:db8::1", "2001:db8::2", port: 22), [v4only]))
    }
}

@Suite("source filter in the kernel", .enabled(if: isRoot, "needs root: creates network namespaces"))
struct SourceFilterKernelTests {
    @Test func tableLoadsListsAndReloads() throws {
        try withNetNS("src") { ns in
            let nf = try ns.session()
            let a = filter(.tcp, PortRange(8080, 8080), ["203.0.113.0/24", "2001:db8:5::/48", "10.0.0.1"])
            let b = filter(.udp, host: "192.0.2.1", dev: "eth0", PortRange(5900, 5999), ["198.51.100.0/24"])
            try nf.changeSourceFilters(from: [], to: [a, b], all: [a, b])
            let text = try ns.listTable("virtport_src")
            #expect(text.contains("8080 . tcp . 0.0.0.0/0 : \"tcp4_8080\""), "\(text)")
            #expect(text.contains("203.0.113.0/24"), "\(text)")
            #expect(text.contains("2001:db8:5::/48"), "\(text)")
            #expect(text.contains("198.51.100.0/24 . 5900-5999 . udp . \"eth0\" . 192.0.2.1"), "\(text)")
            #expect(text.contains("priority dstnat - 10"), "\(text)")
            #expect(text.contains("counter name th dport . meta l4proto . ip daddr map @drop4 drop"), "\(text)")
            #expect(text.contains("ip saddr . th dport . meta l4proto . ip daddr @allow4 accept"), "\(text)")
            #expect(text.contains("type nat hook prerouting priority dstnat - 10"), "\(text)")
            #expect(text.contains("meta nfproto ipv4 th dport @ports4 jump filter4"), "\(text)")
            #expect(!text.contains("ct direction"), "\(text)")
            #expect(try nf.sourceFilterSkeletonIsIntact())
            #expect(text.contains("elements = { 5900-5999, 8080 }"), "\(text)")
            // What nft lists loads back.
            try must(["ip", "netns", "exec", ns.name, "nft", "delete", "table", "inet", "virtport_src"])
            try must(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], stdin: text.replacingOccurrences(of: "table inet virtport_src", with: "table inet virtport_src2"))

            // A list change keeps the counter; removing the forward removes its counter.
            var a2 = a
            a2.prefixes = [prefix("203.0.113.0/24")]
            try nf.changeSourceFilters(from: [a, b], to: [a2, b], all: [a2, b])
            let after = try ns.listTable("virtport_src")
            #expect(!after.contains("2001:db8:5::/48"), "\(after)")
            #expect(!after.contains("10.0.0.1"), "\(after)")
            #expect(try nf.sourceFilterCounters().map(\.name) == ["tcp4_8080", "tcp6_8080", "udp4_5900_5999_eth0_c0000201"])
            try nf.changeSourceFilters(from: [a2, b], to: [b], all: [b])
            #expect(try nf.sourceFilterCounters().map(\.name) == ["udp4_5900_5999_eth0_c0000201"])

            // From a journal that disagrees with the kernel (a2 is already gone): rebuilt with `all`.
            try nf.changeSourceFilters(from: [a2], to: [], all: [a])
            #expect(try nf.sourceFilterCounters().map(\.name) == ["tcp4_8080", "tcp6_8080"])
            try nf.replaceSourceFilters([])
            #expect(try ns.exec(["nft", "list", "table", "inet", "virtport_src"]).status != 0)
        }
    }

    @Test func theDocumentedLimitFitsInOneBatch() throws {
        try withNetNS("srcmax") { ns in
            let nf = try ns.session()
            // The most prefixes a list may hold, IPv6 (the longest keys), on a dev forward with both families.
            let many = (0..<SourceList.maxPrefixes).map { "2001:db8:\(String($0, radix: 16))::/48" }
            let f = filter(.tcp, dev: "eth0", PortRange(1000, 2000), many)
            let clock = ContinuousClock()
            let took = clock.measure { try? nf.changeSourceFilters(from: [], to: [f], all: [f]) }
            // README "Limits": the kernel's insert cost grows with the square of a set's elements.
            #expect(took < .seconds(3), "\(took)")
            let json = try ns.exec(["nft", "-j", "list", "set", "inet", "virtport_src", "allow6_dev"]).stdout
            #expect(json.components(separatedBy: "\"concat\"").count - 1 == SourceList.maxPrefixes)
            #expect(try nf.sourceFilterCounters().map(\.name) == ["tcp4_1000_2000_eth0", "tcp6_1000_2000_eth0"])
        }
    }
}
