import Foundation
import Testing
@testable import Netfilter
import VirtPortCore

/// Against the real kernel, each test in its own network namespace (root only).
@Suite("nf_tables in a netns", .enabled(if: isRoot, "needs root: creates network namespaces"))
struct KernelTableTests {
    /// One element of each of the eight maps.
    static let mixed: [ForwardElement] = [
        element(.tcp, 8080, to: "192.168.122.10", 80),
        element(.udp, host: "203.0.113.5", 5353, to: "192.168.122.10", 53),
        element(.tcp, dev: "eth0", 2222, to: "192.168.122.11", 22),
        element(.sctp, host: "203.0.113.5", dev: "br-ext", 9000, to: "192.168.122.12", 9001),
        element(.tcp, 8080, to: "fd00:122::10", 80),
        element(.udp, host: "2001:db8::5", 5353, to: "fd00:122::10", 53),
        element(.tcp, dev: "eth0", 2222, to: "fd00:122::11", 22),
        element(.tcp, host: "2001:db8::5", dev: "veth-long-name1", 443, to: "fd00:122::12", 8443),
    ]

    @Test func skeletonPrintsBackAsNftSyntax() throws {
        try withNetNS("skel") { ns in
            let nf = try ns.session()
            #expect(try nf.tableExists() == false)
            try nf.apply(adding: [], removing: [])
            #expect(try nf.tableExists())
            let text = try ns.listTable()
            let expected = """
                table inet virtport {
                \tmap fwd4 {
                \t\ttype inet_proto . inet_service : ipv4_addr . inet_service
                \t}

                \tmap fwd4_addr {
                \t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
                \t}

                \tmap fwd4_dev {
                \t\ttype ifname . inet_proto . inet_service : ipv4_addr . inet_service
                \t}

                \tmap fwd4_dev_addr {
                \t\ttype ifname . ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
                \t}

                \tmap fwd6 {
                \t\ttype inet_proto . inet_service : ipv6_addr . inet_service
                \t}

                \tmap fwd6_addr {
                \t\ttype ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service
                \t}

                \tmap fwd6_dev {
                \t\ttype ifname . inet_proto . inet_service : ipv6_addr . inet_service
                \t}

                \tmap fwd6_dev_addr {
                \t\ttype ifname . ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service
                \t}

                \tset hairpin4 {
                \t\ttype ipv4_addr
                \t\tflags interval
                \t}

                \tset hairpin6 {
                \t\ttype ipv6_addr
                \t\tflags interval
                \t}

                \tset flows4 {
                \t\ttype ipv4_addr . inet_service . inet_proto . ipv4_addr . inet_service
                \t\tsize 65536
                \t\tflags dynamic,timeout
                \t\ttimeout 1d
                \t}
                
                \tset flows6 {
                \t\ttype ipv6_addr . inet_service . inet_proto . ipv6_addr . inet_service
                \t\tsize 65536
                \t\tflags dynamic,timeout
                \t\ttimeout 1d
                \t}
                
                \tchain prerouting {
                \t\ttype nat hook prerouting priority dstnat; policy accept;
                \t\tfib daddr type local iifname . ip daddr . meta l4proto . th dport @fwd4_dev_addr add @flows4 { ip saddr . th sport . meta l4proto . ip daddr . th dport }
                \t\tfib daddr type local dnat ip to iifname . ip daddr . meta l4proto . th dport map @fwd4_dev_addr
                \t\tfib daddr type local ip daddr . meta l4proto . th dport @fwd4_addr add @flows4 { ip saddr . th sport . meta l4proto . ip daddr . th dport }
                \t\tfib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @fwd4_addr
                \t\tfib daddr type local iifname . meta l4proto . th dport @fwd4_dev add @flows4 { ip saddr . th sport . meta l4proto . ip daddr . th dport }
                \t\tmeta nfproto ipv4 fib daddr type local dnat ip to iifname . meta l4proto . th dport map @fwd4_dev
                \t\tfib daddr type local meta l4proto . th dport @fwd4 add @flows4 { ip saddr . th sport . meta l4proto . ip daddr . th dport }
                \t\tmeta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @fwd4
                \t\tfib daddr type local iifname . ip6 daddr . meta l4proto . th dport @fwd6_dev_addr add @flows6 { ip6 saddr . th sport . meta l4proto . ip6 daddr . th dport }
                \t\tfib daddr type local dnat ip6 to iifname . ip6 daddr . meta l4proto . th dport map @fwd6_dev_addr
                \t\tfib daddr type local ip6 daddr . meta l4proto . th dport @fwd6_addr add @flows6 { ip6 saddr . th sport . meta l4proto . ip6 daddr . th dport }
                \t\tfib daddr type local dnat ip6 to ip6 daddr . meta l4proto . th dport map @fwd6_addr
                \t\tfib daddr type local iifname . meta l4proto . th dport @fwd6_dev add @flows6 { ip6 saddr . th sport . meta l4proto . ip6 daddr . th dport }
                \t\tmeta nfproto ipv6 fib daddr type local dnat ip6 to iifname . meta l4proto . th dport map @fwd6_dev
                \t\tfib daddr type local meta l4proto . th dport @fwd6 add @flows6 { ip6 saddr . th sport . meta l4proto . ip6 daddr . th dport }
                \t\tmeta nfproto ipv6 fib daddr type local dnat ip6 to meta l4proto . th dport map @fwd6
                \t}
                
                \tchain output {
                \t\ttype nat hook output priority -100; policy accept;
                \t\tfib daddr type local ip daddr . meta l4proto . th dport @fwd4_addr add @flows4 { ip saddr . th sport . meta l4proto . ip daddr . th dport }
                \t\tfib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @fwd4_addr
                \t\tip daddr != 127.0.0.0/8 fib daddr type local meta l4proto . th dport @fwd4 add @flows4 { ip saddr . th sport . meta l4proto . ip daddr . th dport }
                \t\tip daddr != 127.0.0.0/8 fib daddr type local dnat ip to meta l4proto . th dport map @fwd4
                \t\tfib daddr type local ip6 daddr . meta l4proto . th dport @fwd6_addr add @flows6 { ip6 saddr . th sport . meta l4proto . ip6 daddr . th dport }
                \t\tfib daddr type local dnat ip6 to ip6 daddr . meta l4proto . th dport map @fwd6_addr
                \t\tip6 daddr != ::1 fib daddr type local meta l4proto . th dport @fwd6 add @flows6 { ip6 saddr . th sport . meta l4proto . ip6 daddr . th dport }
                \t\tip6 daddr != ::1 fib daddr type local dnat ip6 to meta l4proto . th dport map @fwd6
                \t}
                
                \tchain postrouting {
                \t\ttype nat hook postrouting priority srcnat; policy accept;
                \t\tct status dnat ip saddr @hairpin4 masquerade
                \t\tct status dnat ip6 saddr @hairpin6 masquerade
                \t}
                }

                """
            #expect(text == expected)
            #expect(!text.contains("unknown"))
            // A second ensure changes nothing.
            try nf.apply(adding: [], removing: [])
            #expect(try ns.listTable() == expected)
        }
    }

    /// The element lines `nft list` prints for `mixed`.
    static let mixedAsNft = [
        "tcp . 8080 : 192.168.122.10 . 80",
        "203.0.113.5 . udp . 5353 : 192.168.122.10 . 53",
        "\"eth0\" . tcp . 2222 : 192.168.122.11 . 22",
        "\"br-ext\" . 203.0.113.5 . sctp . 9000 : 192.168.122.12 . 9001",
        "tcp . 8080 : fd00:122::10 . 80",
        "2001:db8::5 . udp . 5353 : fd00:122::10 . 53",
        "\"eth0\" . tcp . 2222 : fd00:122::11 . 22",
        "\"veth-long-name1\" . 2001:db8::5 . tcp . 443 : fd00:122::12 . 8443",
    ]

    /// Elements per map and rule count, from `nft -j list table inet virtport`.
    static func census(_ ns: NetNS) throws -> (elements: [String: Int], rules: Int) {
        var elements: [String: Int] = [:]
        var rules = 0
        for item in try ns.listTableJSON() {
            if let map = item["map"] as? [String: Any], let name = map["name"] as? String {
                elements[name] = (map["elem"] as? [Any])?.count ?? 0
            }
            if let set = item["set"] as? [String: Any], let name = set["name"] as? String {
                elements[name] = (set["elem"] as? [Any])?.count ?? 0
            }
            if item["rule"] != nil { rules += 1 }
        }
        return (elements, rules)
    }

    @Test func addsAllEightMapKindsAndReadsThemBack() throws {
        try withNetNS("add") { ns in
            let nf = try ns.session()
            try nf.apply(adding: Self.mixed, removing: [])
            #expect(try nf.listElements().sorted() == Self.mixed.sorted())
            let text = try ns.listTable()
            for line in Self.mixedAsNft { #expect(text.contains("elements = { \(line) }"), "\(line)") }
            let census = try Self.census(ns)
            #expect(census.rules == 26)
            #expect(ForwardMap.all.allSatisfy { census.elements[$0.name] == 1 })
        }
    }

    @Test func reAddingIsHarmless() throws {
        try withNetNS("readd") { ns in
            let nf = try ns.session()
            try nf.apply(adding: Self.mixed, removing: [])
            try nf.apply(adding: Self.mixed + Self.mixed, removing: [])
            try ns.session().apply(adding: Self.mixed, removing: [])
            #expect(try nf.listElements().count == Self.mixed.count)
            #expect(try Self.census(ns).rules == 26)
        }
    }

    @Test func deletesElements() throws {
        try withNetNS("del") { ns in
            let nf = try ns.session()
            try nf.apply(adding: Self.mixed, removing: [])
            let gone = [Self.mixed[0], Self.mixed[3], Self.mixed[7]]
            try nf.apply(adding: [], removing: gone)
            #expect(try nf.listElements().sorted() == Self.mixed.filter { !gone.contains($0) }.sorted())
            let text = try ns.listTable()
            #expect(!text.contains("br-ext") && !text.contains("veth-long-name1") && !text.contains("tcp . 8080 : 192.168"))
            #expect(text.contains("tcp . 8080 : fd00:122::10 . 80"))
        }
    }

    @Test func deletingAbsentElementsSucceeds() throws {
        try withNetNS("absent") { ns in
            let nf = try ns.session()
            // No table at all: nothing to do, and no table is created for it.
            try nf.apply(adding: [], removing: Self.mixed)
            #expect(try nf.tableExists() == false)

            try nf.apply(adding: Array(Self.mixed[0..<4]), removing: [])
            // Half present, half absent, plus one present key that now points elsewhere (not ours).
            var moved = Self.mixed[1]
            moved.guestAddress = ip("192.168.122.99")
            try nf.apply(adding: [], removing: Self.mixed + [moved])
            #expect(try nf.listElements() == [])
            // All absent.
            try nf.apply(adding: [], removing: Self.mixed)
            // A key someone else now owns is left alone.
            try nf.apply(adding: [Self.mixed[1]], removing: [])
            try nf.apply(adding: [], removing: [moved, Self.mixed[0]])
            #expect(try nf.listElements() == [Self.mixed[1]])
        }
    }

    @Test func movesAPortToAnotherGuestInOneBatch() throws {
        try withNetNS("move") { ns in
            let nf = try ns.session()
            let old = Self.mixed[0]
            var new = old
            new.guestAddress = ip("192.168.122.20")
            try nf.apply(adding: [old], removing: [])
            try nf.apply(adding: [new], removing: [old])
            #expect(try nf.listElements() == [new])
        }
    }

    @Test func sameKeyWithOtherDataFailsNamingTheElement() throws {
        try withNetNS("exists") { ns in
            let nf = try ns.session()
            try nf.apply(adding: Self.mixed, removing: [])
            var clash = Self.mixed[2]
            clash.guestAddress = ip("192.168.122.99")
            let innocent = element(.udp, 7777, to: "192.168.122.10", 7777)
            do {
                try nf.apply(adding: [innocent, clash], removing: [])
                Issue.record("no error")
            } catch let error as NetfilterError {
                #expect(error.isExists)
                #expect(error.operation == "add element tcp/2222 on eth0 -> 192.168.122.99:22 to map fwd4_dev")
                #expect("\(error)".contains("File exists"))
            }
            // Atomic: the innocent element of the failed batch is not there either.
            #expect(try nf.listElements().sorted() == Self.mixed.sorted())
        }
    }

    @Test func listingAMissingTableThrows() throws {
        try withNetNS("missing") { ns in
            let nf = try ns.session()
            #expect(throws: NetfilterError.missingTable("virtport")) { try nf.listElements() }
            #expect(throws: NetfilterError.missingTable("virtport")) { try nf.listHairpin() }
            try nf.deleteTable()  // absent: fine
            try nf.apply(adding: Self.mixed, removing: [])
            try nf.deleteTable()
            #expect(try nf.tableExists() == false)
            #expect(try ns.nft("list table inet virtport").status != 0)
        }
    }

    @Test func tablesOfOtherNamesAreSeparate() throws {
        try withNetNS("names") { ns in
            let a = try ns.session(table: "virtport")
            let b = try ns.session(table: "vp_other")
            try a.apply(adding: [Self.mixed[0]], removing: [])
            try b.apply(adding: [Self.mixed[1]], removing: [])
            try b.deleteTable()
            #expect(try a.listElements() == [Self.mixed[0]])
        }
    }

    @Test func hairpinSets() throws {
        try withNetNS("hairpin") { ns in
            let nf = try ns.session()
            let subnets = ["192.168.122.0/24", "10.77.0.0/16", "fd00:122::/64"].map { Subnet($0)! }
            try nf.apply(adding: [], removing: [], hairpinAdding: subnets)
            try nf.apply(adding: [], removing: [], hairpinAdding: subnets)  // again: harmless
            #expect(Set(try nf.listHairpin()) == Set(subnets))
            let text = try ns.listTable()
            #expect(text.contains("elements = { 10.77.0.0/16, 192.168.122.0/24 }"))
            #expect(text.contains("elements = { fd00:122::/64 }"))
            try nf.apply(adding: [], removing: [], hairpinRemoving: [subnets[0], Subnet("172.16.0.0/12")!])
            #expect(Set(try nf.listHairpin()) == Set(subnets.dropFirst()))
        }
    }

    @Test func replaceAllRepairsAFlushedTable() throws {
        try withNetNS("flush") { ns in
            let nf = try ns.session()
            try nf.apply(adding: Self.mixed, removing: [], hairpinAdding: [Subnet("192.168.122.0/24")!])
            let healthy = try ns.listTable()
            try must(["ip", "netns", "exec", ns.name, "nft", "flush", "table", "inet", "virtport"])
            #expect(try Self.census(ns).rules == 0)
            try nf.replaceAll(elements: Self.mixed, hairpin: [Subnet("192.168.122.0/24")!])
            #expect(try ns.listTable() == healthy)
        }
    }

    @Test func replaceAllRepairsADeletedChainAndDropsStrays() throws {
        try withNetNS("chain") { ns in
            let nf = try ns.session()
            try nf.apply(adding: Self.mixed, removing: [])
            let healthy = try ns.listTable()
            try must(["ip", "netns", "exec", ns.name, "nft", "delete", "chain", "inet", "virtport", "prerouting"])
            try must(["ip", "netns", "exec", ns.name, "nft", "add", "element", "inet", "virtport", "fwd4",
                      "{ udp . 9 : 10.9.9.9 . 9 }"])
            try nf.replaceAll(elements: Self.mixed, hairpin: [])
            #expect(try ns.listTable() == healthy)
            #expect(try nf.listElements().sorted() == Self.mixed.sorted())
        }
    }

    @Test func concurrentFirstCallersCreateOneSetOfRules() throws {
        try withNetNS("race") { ns in
            for round in 0..<8 {
                let failures = Locked<[String]>([])
                DispatchQueue.concurrentPerform(iterations: 2) { worker in
                    do {
                        let nf = try ns.session()
                        try nf.apply(adding: [element(.tcp, UInt16(1000 + worker), to: "10.0.0.\(worker + 1)", 80)], removing: [])
                    } catch {
                        failures.withLock { $0.append("round \(round) worker \(worker): \(error)") }
                    }
                }
                #expect(failures.withLock { $0 } == [])
                let census = try Self.census(ns)
                #expect(census.rules == 26, "round \(round)")
                #expect(census.elements["fwd4"] == 2, "round \(round)")
                #expect(try ns.listTableJSON().filter { $0["chain"] != nil }.count == 3)
                try ns.session().deleteTable()
            }
        }
    }

    @Test func tenThousandElementsInOneBatch() throws {
        try withNetNS("bulk") { ns in
            let nf = try ns.session()
            let v4 = (0..<6_000).map { element(.tcp, UInt16(10_000 + $0), to: "192.168.122.10", UInt16(20_000 + $0)) }
            let v6 = (0..<4_000).map { element(.udp, host: "2001:db8::5", dev: "eth0", UInt16(10_000 + $0), to: "fd00::10", 53) }
            let all = v4 + v6
            let clock = ContinuousClock()
            let took = try clock.measure { try nf.apply(adding: all, removing: []) }
            print("10,000 elements (with skeleton) in one batch: \(took)")
            #expect(Set(try nf.listElements()) == Set(all))
            let census = try Self.census(ns)
            #expect(census.elements["fwd4"] == 6_000 && census.elements["fwd6_dev_addr"] == 4_000)
            // One clash among 1,000 new elements rolls all of them back, and the error names it
            // (the extended ack points inside a message of several hundred elements).
            let fresh = (0..<1_000).map { element(.tcp, UInt16(30_000 + $0), to: "192.168.122.10", 80) }
            var clash = v4[4_321]
            clash.guestPort = 1
            #expect {
                try nf.apply(adding: fresh + [clash], removing: [])
            } throws: { error in
                (error as? NetfilterError)?.operation == "add element tcp/14321 -> 192.168.122.10:1 to map fwd4"
            }
            #expect(Set(try nf.listElements()) == Set(all))
            try nf.apply(adding: [], removing: all)
            #expect(try nf.listElements() == [])
        }
    }
}

/// A value behind a lock, for collecting results from concurrent workers.
final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func withLock<R>(_ body: (inout T) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}
