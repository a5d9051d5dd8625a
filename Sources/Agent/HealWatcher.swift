#if canImport(Glibc)
import POSIX
import Glibc
#endif
import Engine
import Netfilter
import VirtPortCore

/// Self-heal (README "Self-heal"): nf_tables notifications say when someone deleted something —
/// `nft flush ruleset`, an nftables.service restart, a firewalld reload, a hand-typed `nft delete`
/// — or inserted rules into a chain where libvirt's accept rule lives: libvirt rebuilding its
/// firewall (virtnetworkd or libvirtd started or sent SIGHUP: `virtport install`, a package
/// upgrade) deletes its rules and inserts them again at the top of its chains, below which ours
/// would be left, with no hook call. Either makes the agent check, once the changes have settled
/// (20 ms without a new one, at most 250 ms after the first: libvirt's rebuild is a run of `nft`
/// or `iptables` processes), and put back from the journal what is missing or misplaced
/// (`Healer`), under the exclusive change lock: everything after a deletion, only the accept
/// rule's place after insertions alone. The agent's own batches (its hook workers' and its
/// heals') are recognised by the committing thread id and netlink port id the kernel names in
/// each batch's NEWGEN message (`OwnCommits`) and ignored: putting the rule back does not start
/// another check.
///
/// It never fights another tool forever: three heals within a minute (ten when each only put the
/// accept rule back in front of libvirt's reject, which every libvirt reload needs) and it backs
/// off — the next check waits 1 s, then 2, 4, … up to 5 min — and says so in the log, naming the
/// process that changed the rules. A minute without a heal ends the back-off.
final class HealWatcher: Watcher, @unchecked Sendable {
    let name = "nf_tables notifications"
    static let debounceMs: Int64 = 20
    static let maxSettleMs: Int64 = 250
    static let window: Int64 = 60_000
    static let stormHeals = 3
    static let stormReorders = 10
    static let maxBackoffMs: Int64 = 300_000

    private var monitor: NftablesMonitor?
    /// On the loop thread: a check is scheduled; who changed what, for the log; when (µs).
    private var scheduled = false
    private var culprits: [String] = []
    /// Something relevant was deleted (or notifications were lost): a full check, not only the
    /// accept rule's place.
    private var deletions = false
    private var firstNotice: Int64 = 0
    private var lastNotice: Int64 = 0
    /// On the work queue: recent heals and order restorations (CLOCK_MONOTONIC ms), the back-off.
    private var heals: [Int64] = []
    private var reorders: [Int64] = []
    private var backoffMs: Int64 = 0
    private var notBefore: Int64 = 0
    private var deferred = false

    func start(_ agent: AgentContext) throws(VirtPortError) {
        let m: NftablesMonitor
        do { m = try NftablesMonitor() } catch {
            throw .operational("cannot listen to nf_tables notifications", cause: error)
        }
        monitor = m
        try agent.loop.watch(m.fd) { [self] in readable(agent) }
        // libvirt's accept rule, displaced while no agent watched (libvirt rebuilt its firewall
        // while the agent was being restarted, by a package upgrade say), is put right now, not at
        // the next notification. Only that: the rest is the start-up reconcile's business.
        let started = MonotonicClock.micros()
        agent.work.async { [self] in
            check(agent, culprit: "found when the agent started", noticed: started, acceptRulesOnly: true)
        }
    }

    /// Whether `b` may have taken away or displaced something of virtport's: a deletion from its
    /// tables or from a table where libvirt's accept rule may live, or a rule inserted into a chain
    /// where that rule lives (which may now come first).
    /// - Returns: who did what, for the log, and whether it deleted (then everything is checked;
    ///   an insertion can only have displaced libvirt's accept rule, so only that is).
    /// `tables`: every rule kind's (`DomainLifecycle.tables`).
    static func relevant(_ b: NftablesMonitor.Batch, tables: Set<String>) -> (who: String, deleted: Bool)? {
        let deleted = b.deletedFrom.contains { t in
            tables.contains(t) || t.hasPrefix("ip ") || t.hasPrefix("ip6 ")
                || t.hasPrefix("inet libvirt")
        }
        if deleted { return ("deleted by \(b.committer)", true) }
        if !b.addedTo.isDisjoint(with: LibvirtChains.acceptRuleChains) { return ("rules inserted by \(b.committer)", false) }
        return nil
    }

    /// On the loop.
    private func readable(_ agent: AgentContext) {
        guard let monitor else { return }
        let (batches, overrun) = monitor.read()
        let tables = DomainLifecycle.tables(agent.config)
        var relevant = overrun
        if overrun { deletions = true }
        for b in batches where !OwnCommits.committed(b) {
            guard let (who, deleted) = Self.relevant(b, tables: tables) else { continue }
            relevant = true
            if deleted { deletions = true }
            if !culprits.contains(who) { culprits.append(who) }
        }
        guard relevant else { return }
        lastNotice = MonotonicClock.micros()
        guard !scheduled else { return }
        scheduled = true
        firstNotice = lastNotice
        agent.loop.schedule(afterMillis: Self.debounceMs) { [self] in settled(agent) }
    }

    /// On the loop: the check runs once nothing relevant came for `debounceMs` (a rebuild in
    /// progress is waited for), or `maxSettleMs` after the first notice at the latest.
    private func settled(_ agent: AgentContext) {
        let now = MonotonicClock.micros()
        let quietMs = (now - lastNotice) / 1000, sinceFirstMs = (now - firstNotice) / 1000
        if quietMs < Self.debounceMs && sinceFirstMs < Self.maxSettleMs {
            agent.loop.schedule(afterMillis: min(Self.debounceMs - quietMs, Self.maxSettleMs - sinceFirstMs)) { [self] in
                settled(agent)
            }
            return
        }
        let who = culprits.isEmpty ? "unknown (notifications were lost)"
            : culprits.prefix(3).joined(separator: ", ") + (culprits.count > 3 ? " and \(culprits.count - 3) more batches" : "")
        let noticed = firstNotice, full = deletions
        culprits = []
        deletions = false
        scheduled = false
        agent.work.async { [self] in check(agent, culprit: who, noticed: noticed, acceptRulesOnly: !full) }
    }

    /// On the work queue.
    private func check(_ agent: AgentContext, culprit: String, noticed: Int64, acceptRulesOnly: Bool = false) {
        let now = MonotonicClock.micros() / 1000
        if deferred { return }  // a deferred check is due; it looks at everything
        if now < notBefore {
            deferred = true
            agent.loop.schedule(afterMillis: notBefore - now) {
                agent.work.async { [self] in
                    deferred = false
                    check(agent, culprit: culprit, noticed: noticed)
                }
            }
            return
        }
        let healed: [String]
        let began = MonotonicClock.micros()
        defer {
            // Each check, even one that finds nothing: at 10,000 mappings a full check holds the
            // exclusive change lock ~150–250 ms, which every hook then waits for (issue 24).
            if agent.verbose {
                AgentLog.write("self-heal check (\(culprit)) took \((MonotonicClock.micros() - began) / 1000) ms")
            }
        }
        do {
            healed = try agent.withResources { (r) throws(VirtPortError) in
                acceptRulesOnly ? try Healer.healAcceptRules(resources: r, diagnostics: CollectedDiagnostics())
                    : try Healer.heal(resources: r, diagnostics: CollectedDiagnostics())
            }
        } catch {
            agent.log.warning("agent: self-heal failed: \(error) (run 'virtport reconcile')")
            notBefore = 0
            return
        }
        heals.removeAll { $0 < now - Self.window }
        reorders.removeAll { $0 < now - Self.window }
        if healed.isEmpty {
            notBefore = 0
            return
        }
        let reorderOnly = healed.allSatisfy(Healer.isReorder)
        if reorderOnly { reorders.append(now) } else { heals.append(now) }
        agent.metrics.healed()
        agent.metrics.event(source: "heal", micros: MonotonicClock.micros() - noticed)
        agent.metrics.changed(agent)
        let line = "healed: \(healed.joined(separator: "; ")) (\(culprit))"
        agent.log.notice(line)
        agent.say(line)
        if heals.count >= Self.stormHeals || reorders.count >= Self.stormReorders {
            backoffMs = min(max(backoffMs * 2, 1000), Self.maxBackoffMs)
            let count = reorderOnly ? reorders.count : heals.count
            agent.log.warning("agent: virtport's rules were \(reorderOnly ? "displaced" : "deleted") \(count) times in the last "
                + "\(Self.window / 1000) s, last \(culprit): backing off, the next re-apply waits \(backoffMs / 1000) s. "
                + "Another tool keeps \(reorderOnly ? "inserting rules above them" : "removing them") (a firewall manager "
                + "that owns the whole ruleset?): exclude table inet \(agent.config.table) there")
            notBefore = now + backoffMs
        } else {
            backoffMs = 0
            notBefore = 0
        }
    }
}
