import Engine
import Netfilter
import VirtPortCore

/// Turns nf_tables trace events into `virtport trace`'s lines: one per hop (table, chain, rule
/// verdict, in hook order), the table's owner, the conntrack state, the guest's replies through
/// the guard, and a closing verdict. Pure: unit-tested with events built by hand.
struct TraceReport {
    /// virtport's table name (`[nftables] table`): its inet table holds the forwards, its bridge
    /// table the guard.
    var table: String
    /// The trace's own tables (their events are the marking rule: not shown).
    var traceTable: String
    var proto: IPProto
    var hostPort: UInt16
    var guest: (address: IPAddress, port: UInt16)?
    /// Interface index → name, for iif/oif.
    var interfaceName: (UInt32) -> String = { "if\($0)" }
    /// (family, table, chain, handle) → the rule, to tell a reject from a drop.
    var rules: [String: KernelRule] = [:]

    struct Hop {
        var event: TraceEvent
        var owner: String
        var verdict: String
    }

    struct Packet {
        var number: Int
        var id: UInt32
        var reply: Bool
        var summary: String
        var ct: String?
        var hops: [Hop] = []
        var blocked: Hop?
        var outInterface: String?
        var done = false
    }

    private(set) var packets: [Packet] = []
    private var open: [UInt32: Int] = [:]
    /// Packets followed at most (the rest of a connection is not news): `--count` originals and
    /// as many replies.
    var limit = Int.max

    init(table: String, traceTable: String, proto: IPProto, hostPort: UInt16, guest: (address: IPAddress, port: UInt16)?) {
        self.table = table
        self.traceTable = traceTable
        self.proto = proto
        self.hostPort = hostPort
        self.guest = guest
    }

    /// Who a table belongs to, as people name it.
    func owner(family: String, table name: String, chain: String) -> String {
        if name == table { return family == "bridge" ? "virtport's guard" : "virtport's forwards" }
        if name == traceTable { return "virtport trace" }
        if let owner = RuleKinds.owner(family: family, table: name, base: table) { return owner }
        if name.hasPrefix("libvirt") || chain.hasPrefix("LIBVIRT_") || chain.hasPrefix("guest_") && name.hasPrefix("libvirt") {
            return "libvirt's"
        }
        if name == "firewalld" { return "firewalld's" }
        if chain.hasPrefix("DOCKER") { return "Docker's" }
        return "someone's `\(family) \(name)`"
    }

    static func family(_ f: UInt8) -> String { NetfilterSession.anyFamilyName(UInt32(f)) }

    static func verdictName(_ e: TraceEvent) -> String {
        let v: String
        switch e.verdict ?? (e.kind == .policy ? Int32(e.policy ?? 1) : -1) {
        case 0: v = "drop"
        case 1: v = "accept"
        case 2: v = "stolen"
        case 3: v = "queue"
        case -1: v = "continue"
        case -2: v = "break"
        case -3: v = "jump \(e.target ?? "?")"
        case -4: v = "goto \(e.target ?? "?")"
        case -5: v = "return"
        case let c: v = "verdict \(c)"
        }
        switch e.kind {
        case .policy: return "policy \(v)"
        case .return: return "return"
        default: return e.handle == nil && e.verdict == -1 ? "end of chain" : v
        }
    }

    func key(_ family: String, _ table: String, _ chain: String, _ handle: UInt64) -> String { "\(family) \(table) \(chain) \(handle)" }

    /// "rejected" or "dropped" for a drop verdict.
    func action(_ hop: Hop) -> String {
        let e = hop.event
        if e.kind == .rule, let h = e.handle, let r = rules[key(Self.family(e.family), e.table, e.chain, h)], r.rejects { return "rejected" }
        return "dropped"
    }

    /// Adds events; returns the lines to print for them.
    mutating func add(_ events: [TraceEvent]) -> [String] {
        var lines: [String] = []
        for e in events {
            let i: Int
            if let known = open[e.id] {
                i = known
            } else {
                // A packet is ours when our own marking rule is its first event (another tool's
                // trace, or another virtport trace, marks its packets elsewhere).
                guard e.table == traceTable, !e.network.isEmpty else { continue }
                let reply = isReply(e)
                if packets.filter({ $0.reply == reply }).count >= limit { continue }
                packets.append(Packet(number: packets.count + 1, id: e.id, reply: reply, summary: summary(e, reply: reply)))
                i = packets.count - 1
                open[e.id] = i
                lines.append("#\(packets[i].number) \(packets[i].reply ? "reply" : "packet") \(packets[i].summary)")
            }
            if packets[i].ct == nil, let s = e.ctState {
                packets[i].ct = Self.ctName(s, direction: e.ctDirection)
                lines.append("#\(packets[i].number)   conntrack: \(packets[i].ct!)")
            }
            // Out towards the guest: forwarded (in and out interfaces both known), or addressed to it.
            if let oif = e.oif, oif != 0 {
                let toGuest = guest.map { g in e.addresses?.destination == g.address.bytes } ?? false
                if (e.iif ?? 0) != 0 || toGuest { packets[i].outInterface = interfaceName(oif) }
            }
            if e.table == traceTable { continue }
            let fam = Self.family(e.family)
            let hop = Hop(event: e, owner: owner(family: fam, table: e.table, chain: e.chain), verdict: Self.verdictName(e))
            packets[i].hops.append(hop)
            var where_ = "\(fam) \(e.table) \(e.chain)"
            if e.kind == .rule, let h = e.handle { where_ += " rule handle \(h)" }
            var text = "#\(packets[i].number)   \(where_): \(hop.verdict) (\(hop.owner))"
            if let oif = e.oif, oif != 0 { text += " out \(interfaceName(oif))" }
            if isDrop(e) {
                packets[i].blocked = hop
                packets[i].done = true
                open[e.id] = nil
                text += " — \(action(hop))"
            }
            lines.append(text)
        }
        return lines
    }

    func isDrop(_ e: TraceEvent) -> Bool {
        if e.kind == .policy { return (e.verdict ?? Int32(e.policy ?? 1)) == 0 }
        return e.verdict == 0
    }

    func isReply(_ e: TraceEvent) -> Bool {
        if e.ctDirection == 1 { return true }
        guard let g = guest, let a = e.addresses, let p = e.ports else { return false }
        return a.source == g.address.bytes && p.source == g.port
    }

    func summary(_ e: TraceEvent, reply: Bool) -> String {
        guard let a = e.addresses else { return "(no IP header)" }
        func addr(_ b: [UInt8]) -> String {
            guard let ip = IPAddress(bytes: b) else { return "?" }
            return ip.family == .ipv6 ? "[\(ip)]" : "\(ip)"
        }
        let p = e.ports
        var s = "\(addr(a.source)):\(p?.source ?? 0) -> \(addr(a.destination)):\(p?.destination ?? 0) \(proto.rawValue)"
        if let f = e.tcpFlags { s += " [\(f)]" }
        if let iif = e.iif, iif != 0 { s += " in \(interfaceName(iif))" }
        return s
    }

    static func ctName(_ state: UInt32, direction: UInt8?) -> String {
        let name: String
        switch state {
        case 1: name = "invalid"
        case 2: name = "established"
        case 4: name = "related"
        case 8: name = "new"
        case 64: name = "untracked"
        default: name = "state \(state)"
        }
        return direction.map { name + ($0 == 0 ? ", original direction" : ", reply direction") } ?? name
    }

    var originalsDone: Int { packets.filter { !$0.reply }.count }

    /// The one-line verdict: the first table and rule that dropped or rejected a traced packet,
    /// or where it went.
    var verdict: (line: String, json: JSONValue) {
        func see(_ h: Hop) -> String {
            let e = h.event
            return "nft -a list chain \(Self.family(e.family)) \(e.table) \(e.chain)"
        }
        if let p = packets.first(where: { $0.blocked != nil }), let h = p.blocked {
            let e = h.event
            let what = e.kind == .policy ? "the policy of chain \(e.chain)" : "chain \(e.chain), rule handle \(e.handle ?? 0)"
            let subject = p.reply ? "the guest's reply was" : "the packet was"
            let act = action(h)
            return ("verdict: \(subject) \(act) by \(h.owner) table \(Self.family(e.family)) \(e.table), \(what) (see it: \(see(h)))",
                    .object([("result", .string(act)), ("direction", .string(p.reply ? "reply" : "original")),
                             ("owner", .string(h.owner)), ("family", .string(Self.family(e.family))), ("table", .string(e.table)),
                             ("chain", .string(e.chain)), ("handle", e.handle.map { .int(Int($0)) } ?? .null),
                             ("policy", .bool(e.kind == .policy)), ("command", .string(see(h)))]))
        }
        guard let first = packets.first(where: { !$0.reply }) else {
            return ("verdict: no packet to \(proto.rawValue)/\(hostPort) was seen", .object([("result", .string("no-packet"))]))
        }
        let replies = packets.contains { $0.reply }
        if let out = first.outInterface {
            var line = "verdict: reached the guest (forwarded out \(out)"
            if let g = guest { line += " to \(g.address.family == .ipv6 ? "[\(g.address)]" : "\(g.address)"):\(g.port)" }
            line += "); accepted by every table on the way"
            if replies {
                let guarded = packets.contains { $0.reply && $0.hops.contains { $0.owner == "virtport's guard" } }
                line += guarded ? "; the guest's reply came back through the guard" : "; the guest replied"
            }
            return (line, .object([("result", .string("reached-guest")), ("out", .string(out)), ("reply", .bool(replies))]))
        }
        return ("verdict: accepted, but not forwarded: the host itself took the packet (no forward for \(proto.rawValue)/\(hostPort) applied?)",
                .object([("result", .string("local"))]))
    }

    /// `--json`: the packets, their hops and the verdict as one document.
    var json: JSONValue {
        .object([
            ("packets", .array(packets.map { p in
                .object([("number", .int(p.number)), ("direction", .string(p.reply ? "reply" : "original")),
                         ("summary", .string(p.summary)), ("conntrack", .optional(p.ct)),
                         ("hops", .array(p.hops.map { h in
                             .object([("family", .string(Self.family(h.event.family))), ("table", .string(h.event.table)),
                                      ("chain", .string(h.event.chain)), ("handle", h.event.handle.map { .int(Int($0)) } ?? .null),
                                      ("verdict", .string(h.verdict)), ("owner", .string(h.owner))])
                         }))])
            })),
            ("verdict", verdict.json),
            ("text", .string(verdict.line)),
        ])
    }
}
