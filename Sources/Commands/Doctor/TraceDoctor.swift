#if canImport(Glibc)
import Glibc
#endif
import Engine
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
        let stale = leftovers.filter { kill($0.pid, 0) != 0 && errno == ESRCH }
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
        for t in tables where kill(t.pid, 0) != 0 && errno == ESRCH && !done.contains(t.name) {
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
        var out: [Finding] = []
        // Per foreign table holding a forward-hook base chain: the first rule that drops.
        var seen = Set<String>()
        for base in chains where base.hook == 2 && base.type == "filter" && isForeign(base, config: config) {
            let tableKey = "\(base.family) \(base.table)"
            if seen.contains(tableKey) { continue }
            let inTable = rules.filter { $0.family == base.family && $0.table == base.table }
            guard let (chain, rule) = firstDrop(from: base.name, rules: inTable, depth: 0) else {
                if base.policy == 0 {
                    seen.insert(tableKey)
                    out.append(finding(family: base.family, table: base.table, chain: base.name, handle: nil, applied: applied))
                }
                continue
            }
            seen.insert(tableKey)
            out.append(finding(family: base.family, table: base.table, chain: chain, handle: rule.handle, applied: applied))
        }
        if out.isEmpty {
            out.append(.ok("foreign drops", "no foreign forward chain drops or rejects before virtport's forwards (static check)"))
        }
        return out
    }

    static func isForeign(_ c: KernelChain, config: Config) -> Bool {
        guard ["inet", "ip", "ip6"].contains(c.family) else { return false }
        return c.table != config.table && !c.table.hasPrefix(config.table + "_trace_")
    }

    /// The first rule reached from `chain` that drops, before a rule that accepts virtport's
    /// traffic (its tagged accept rule in libvirt's chain) ends the scan.
    static func firstDrop(from chain: String, rules: [KernelRule], depth: Int) -> (String, KernelRule)? {
        guard depth < 8 else { return nil }
        for r in rules where r.chain == chain {
            if r.verdicts.contains(where: { $0.code == 1 }) && r.mentions("virtport") { return nil }
            if r.drops { return (chain, r) }
            for v in r.verdicts where (v.code == -3 || v.code == -4) {
                if let target = v.chain, let found = firstDrop(from: target, rules: rules, depth: depth + 1) { return found }
            }
            // iptables-nft jumps are "target"-less immediates too; a plain "counter + jump" is covered above.
        }
        return nil
    }

    static func finding(family: String, table: String, chain: String, handle: UInt64?, applied: [ActiveMapping]) -> Finding {
        let which = handle.map { "rule handle \($0)" } ?? "policy drop"
        let first = applied[0].mapping
        let forwards = applied.prefix(3).map { MappingText.describe($0.mapping) }.joined(separator: ", ") + (applied.count > 3 ? ", …" : "")
        return .fail("foreign drops", "table \(family) \(table), chain \(chain), \(which) drops or rejects forwarded packets and may stop \(forwards) (static check: its matches were not evaluated)",
                     why: "a packet must be accepted by every table it crosses: a drop in another table stops a forward virtport applied",
                     fix: "nft -a list chain \(family) \(table) \(chain)   (see the rule; allow the forward there), and virtport trace \(first.proto.rawValue) \(first.hostPorts.start) to see a real packet's path",
                     status: "warn")
    }
}
