#if canImport(Glibc)
import Glibc
#endif
import Engine
import POSIX
import Journal
import Netfilter
import VirtPortCore

/// doctor's checks that read the ruleset without traffic: a trace table a killed `virtport trace`
/// left, and foreign tables whose rules would drop an applied forward's packets (static, best
/// effort: a drop or reject rule reachable from a foreign `forward` base chain before anything
/// that accepts virtport's traffic; its matches are not evaluated).
enum TraceDoctor {
    static func findings(config: Config) -> [Finding] {
        guard geteuid() == 0, let nf = try? NetfilterSession(table: config.table) else { return [] }
        var out: [Finding] = []
        let leftovers = (try? nf.traceTables()) ?? []
        let stale = leftovers.filter { !Process.exists($0.pid) }
        if stale.isEmpty {
            out.append(.ok("trace tables", leftovers.isEmpty ? "no virtport trace table" : "a virtport trace is running (pid \(leftovers[0].pid))"))
        } else {
            out.append(.fail("trace tables", "trace table\(stale.count == 1 ? "" : "s") left by a killed virtport trace: \(stale.map { "\($0.family) \($0.name)" }.joined(separator: ", "))",
                             why: "it marks every packet to the traced port with meta nftrace: a small cost per packet, and trace events nobody reads",
                             fix: "virtport reconcile"))
        }
        out += foreignDrops(nf: nf, config: config)
        return out
    }

    /// Trace tables whose process is gone, deleted (reconcile). Returns one line per table.
    static func removeLeftovers(config: Config, dryRun: Bool) -> [String] {
        guard let nf = try? NetfilterSession(table: config.table), let tables = try? nf.traceTables() else { return [] }
        var lines: [String] = []
        var done = Set<String>()
        for t in tables where !Process.exists(t.pid) && !done.contains(t.name) {
            done.insert(t.name)
            if !dryRun { try? nf.removeTrace(name: t.name) }
            lines.append("\(dryRun ? "would " : "")delete-trace-table \(t.name) (left by a virtport trace that is gone, pid \(t.pid))")
        }
        return lines
    }

    static func foreignDrops(nf: NetfilterSession, config: Config) -> [Finding] {
        guard let db = try? Resources.perProcess(config).existingJournal(readOnly: true),
              let rows = try? db.activeMappings() else { return [] }
        let applied = rows.filter { !$0.mapping.isPending }
        guard !applied.isEmpty, let chains = try? nf.listChains(), let rules = try? nf.listAllRules() else { return [] }
        let files = LibvirtFiles(config: config, overrides: [])
        var out: [Finding] = []
        // Per foreign forward-hook base chain and forward: the first rule that may drop its first
        // packet (after DNAT, to the guest, out of its bridge, ct new).
        var seen = Set<String>()
        for row in applied {
            let m = row.mapping
            guard let guest = m.guestAddress else { continue }
            let bridge = m.network.flatMap { files.network(named: $0)?.bridge }
            let ip = guest.family == .ipv4 ? "ip" : "ip6"
            // Which packets each hook sees: the first packet before DNAT (prerouting), after it
            // (forward), and the guest's reply (forward).
            for base in chains where base.type == "filter" && isForeign(base, config: config) && (base.family == "inet" || base.family == ip) {
                let packets: [(PacketModel, String)]
                switch base.hook {
                case 0: packets = [(.prerouting(m, guest: guest, bridge: bridge, priority: base.priority ?? 0), "its packets")]
                case 2: packets = [(.forwardOriginal(m, guest: guest, bridge: bridge), "its packets"),
                                   (.forwardReply(m, guest: guest, bridge: bridge), "the guest's replies")]
                default: continue
                }
                let inTable = rules.filter { $0.family == base.family && $0.table == base.table }
                for (packet, what) in packets {
                    switch firstDrop(from: base.name, rules: inTable, packet: packet, depth: 0) {
                    case .drop(let chain, let rule):
                        if seen.insert("\(base.family) \(base.table) \(chain) \(rule.handle)").inserted {
                            out.append(finding(family: base.family, table: base.table, chain: chain, handle: rule.handle, forward: m, what: what))
                        }
                    case .end where base.policy == 0:
                        if seen.insert("\(base.family) \(base.table) \(base.name) policy").inserted {
                            out.append(finding(family: base.family, table: base.table, chain: base.name, handle: nil, forward: m, what: what))
                        }
                    case .accepted, .end:
                        continue
                    }
                }
            }
        }
        if out.isEmpty {
            out.append(.ok("foreign drops", "no foreign forward chain drops or rejects an applied forward's packets (static check)"))
        }
        return out
    }

    static func isForeign(_ c: KernelChain, config: Config) -> Bool {
        guard ["inet", "ip", "ip6"].contains(c.family) else { return false }
        return c.table != config.table && !c.table.hasPrefix(config.table + "_trace_") 
            && RuleKinds.owner(family: c.family, table: c.table, base: config.table) == nil
    }

    enum Scan {
        case drop(String, KernelRule)
        case accepted
        case end
    }

    /// Walks `chain` as the packet would: a rule that surely matches and accepts (or is virtport's
    /// tagged accept rule) ends it; a rule that may match and drops is the answer; jumps are followed.
    static func firstDrop(from chain: String, rules: [KernelRule], packet: PacketModel, depth: Int) -> Scan {
        guard depth < 8 else { return .end }
        for r in rules where r.chain == chain {
            if r.isVirtportTagged { return .accepted }
            let match = r.matches(packet)
            if match == .no { continue }
            if r.drops { return .drop(chain, r) }
            if match == .yes && r.verdicts.contains(where: { $0.code == 1 }) { return .accepted }
            for v in r.verdicts where v.code == -3 || v.code == -4 {
                guard let target = v.chain else { continue }
                switch firstDrop(from: target, rules: rules, packet: packet, depth: depth + 1) {
                case .end: continue
                case let other: return other
                }
            }
            if match == .yes && r.verdicts.contains(where: { $0.code == -5 }) { return .end }
        }
        return .end
    }

    static func finding(family: String, table: String, chain: String, handle: UInt64?, forward m: Mapping, what: String) -> Finding {
        let which = handle.map { "rule handle \($0)" } ?? "policy drop"
        return .fail("foreign drops", "table \(family) \(table), chain \(chain), \(which) may drop or reject \(what) of \(MappingText.describe(m)) (static check: compares on sets, xt matches and the client's address are not evaluated)",
                     why: "a packet must be accepted by every table it crosses: a drop in another table stops a forward virtport applied",
                     fix: "nft -a list chain \(family) \(table) \(chain)   (see the rule; allow the forward there), and virtport trace \(m.proto.rawValue) \(m.hostPorts.start) to see a real packet's path",
                     status: "warn")
    }
}
