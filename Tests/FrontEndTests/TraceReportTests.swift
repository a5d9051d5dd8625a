import Testing
import Netfilter
import VirtPortCore
@testable import Commands

/// `virtport trace`'s lines and verdict from hand-made events: the owner of each table, a drop
/// versus a reject, the guest's reply through the guard, a clean path.
struct TraceReportTests {
    let g = IPAddress("192.168.122.10")!
    func report() -> TraceReport {
        var r = TraceReport(table: "virtport", traceTable: "virtport_trace_42", proto: .tcp, hostPort: 2222, guest: (g, 22))
        r.interfaceName = { ["", "lo", "h0", "br0", "vnet0"][Int($0)] }
        return r
    }
    let syn: [UInt8] = [0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 203, 0, 113, 2, 203, 0, 113, 1]
    let synTCP: [UInt8] = [0x9c, 0x40, 0x08, 0xae, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xff, 0xff]
    let reply: [UInt8] = [0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 192, 168, 122, 10, 203, 0, 113, 2]
    let replyTCP: [UInt8] = [0, 22, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x12, 0xff, 0xff]

    func event(_ id: UInt32, _ family: UInt8, _ table: String, _ chain: String, _ kind: TraceEvent.Kind,
               handle: UInt64? = nil, verdict: Int32? = nil, policy: UInt32? = nil, iif: UInt32 = 2, oif: UInt32? = nil,
               reply: Bool = false) -> TraceEvent {
        var e = TraceEvent()
        e.id = id; e.family = family; e.table = table; e.chain = chain; e.kind = kind
        e.handle = handle; e.verdict = verdict; e.policy = policy; e.iif = iif; e.oif = oif
        e.network = reply ? self.reply : syn
        e.transport = reply ? replyTCP : synTCP
        return e
    }

    @Test func owners() {
        let r = report()
        #expect(r.owner(family: "inet", table: "virtport", chain: "prerouting") == "virtport's forwards")
        #expect(r.owner(family: "bridge", table: "virtport", chain: "ip4") == "virtport's guard")
        #expect(r.owner(family: "ip", table: "filter", chain: "LIBVIRT_FWI") == "libvirt's")
        #expect(r.owner(family: "ip", table: "libvirt_network", chain: "guest_input") == "libvirt's")
        #expect(r.owner(family: "inet", table: "firewalld", chain: "filter_FORWARD") == "firewalld's")
        #expect(r.owner(family: "ip", table: "filter", chain: "DOCKER-USER") == "Docker's")
        #expect(r.owner(family: "inet", table: "filter", chain: "forward") == "someone's `inet filter`")
    }

    @Test func rejectInAForeignTableIsTheVerdict() {
        var r = report()
        let lines = r.add([
            event(9, 1, "filter", "forward", .rule, handle: 3, verdict: 1),        // someone else's trace: not ours
            event(1, 1, "virtport_trace_42", "prerouting", .rule, handle: 2, verdict: -1),
            event(1, 1, "virtport", "prerouting", .rule, handle: 15, verdict: 1),
            event(1, 1, "filter", "forward", .rule, handle: 3, verdict: 0, oif: 3),
        ])
        #expect(lines.first == "#1 packet 203.0.113.2:40000 -> 203.0.113.1:2222 tcp [S] in h0")
        #expect(lines.contains("#1   inet virtport prerouting rule handle 15: accept (virtport's forwards)"))
        #expect(!lines.contains { $0.contains("virtport_trace_42") })
        // Without the rule read back it is a drop; with its `reject` expression, a reject.
        #expect(r.verdict.line.hasPrefix("verdict: the packet was dropped by someone's `inet filter` table inet filter, chain forward, rule handle 3"))
        r.rules[r.key("inet", "filter", "forward", 3)] = KernelRule(family: "inet", table: "filter", chain: "forward", handle: 3,
                                                                    expressions: ["meta", "cmp", "reject"], verdicts: [], message: [])
        #expect(r.verdict.line == "verdict: the packet was rejected by someone's `inet filter` table inet filter, chain forward, rule handle 3 (see it: nft -a list chain inet filter forward)")
    }

    @Test func policyDrop() {
        var r = report()
        _ = r.add([event(1, 1, "virtport_trace_42", "prerouting", .rule, handle: 2, verdict: -1),
                   event(1, 1, "filter", "forward", .policy, policy: 0)])
        #expect(r.verdict.line.contains("dropped by someone's `inet filter` table inet filter, the policy of chain forward"))
    }

    @Test func cleanPathThenTheGuardDropsTheReply() {
        var r = report()
        _ = r.add([
            event(1, 1, "virtport_trace_42", "prerouting", .rule, handle: 2, verdict: -1),
            event(1, 1, "virtport", "prerouting", .rule, handle: 15, verdict: 1),
            event(1, 1, "virtport", "postrouting", .policy, policy: 1, oif: 3),
        ])
        #expect(r.verdict.line.hasPrefix("verdict: reached the guest (forwarded out br0 to 192.168.122.10:22)"))
        let lines = r.add([event(2, 7, "virtport_trace_42", "prerouting", .rule, handle: 1, verdict: -1, iif: 4, reply: true),
                           event(2, 7, "virtport", "ip4", .rule, handle: 9, verdict: 0, iif: 4, reply: true)])
        #expect(lines.first == "#2 reply 192.168.122.10:22 -> 203.0.113.2:40000 tcp [S.] in vnet0")
        #expect(r.verdict.line.hasPrefix("verdict: the guest's reply was dropped by virtport's guard table bridge virtport, chain ip4, rule handle 9"))
        #expect(r.originalsDone == 1)
    }

    @Test func nothingSeen() {
        #expect(report().verdict.line == "verdict: no packet to tcp/2222 was seen")
    }
}
