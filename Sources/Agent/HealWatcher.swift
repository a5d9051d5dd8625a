#if canImport(Glibc)
import Glibc
#endif
import Engine
import Netfilter
import VirtPortCore

/// Self-heal (README "Self-heal"): nf_tables notifications say when someone deleted something —
/// `nft flush ruleset`, an nftables.service restart, a firewalld reload, a hand-typed `nft delete`.
/// A batch that deleted from virtport's tables, or from any table where libvirt's accept rule may
/// live, makes the agent check, 20 ms later (a burst is one check), and put back from the journal
/// what is missing (`Healer`), under the exclusive change lock. The agent's own batches (its
/// hook workers' and its heals') are recognised by the committing pid the kernel names in each
/// batch's NEWGEN message and ignored. A hook's own delete at a VM stop makes a check that finds
/// nothing missing.
///
/// It never fights another tool forever: three heals within a minute and it backs off — the next
/// check waits 1 s, then 2, 4, … up to 5 min — and says so in the log, naming the process that
/// deleted virtport's rules. A minute without a heal ends the back-off.
///
/// NEWGEN names the committing *thread* (the kernel's `task_pid_nr(current)`), and the agent
/// commits from its hook workers' threads: a batch is its own when that id is one of its threads
/// (`OwnThreads`), not only when it equals getpid(). Comparing with getpid() alone made every stop
/// the agent served look foreign, and the check that followed (journal read + kernel dump under
/// the exclusive change lock, ~170 ms at 10,000 mappings) held up the next hooks.
final class HealWatcher: Watcher, @unchecked Sendable {
    let name = "nf_tables notifications"
    static let debounceMs: Int64 = 20
    static let window: Int64 = 60_000
    static let stormHeals = 3
    static let maxBackoffMs: Int64 = 300_000

    private var monitor: NftablesMonitor?
    /// On the loop thread: a check is scheduled; who deleted, for the log.
    private var scheduled = false
    private var culprits: [String] = []
    private var firstNotice: Int64 = 0
    /// On the work queue: recent heals (CLOCK_MONOTONIC ms), the back-off.
    private var heals: [Int64] = []
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
    }

    /// On the loop.
    private func readable(_ agent: AgentContext) {
        guard let monitor else { return }
        let (batches, overrun) = monitor.read()
        let table = agent.config.table
        var relevant = overrun
        for b in batches where !OwnThreads.contains(b.pid) && !b.deletedFrom.isEmpty {
            // Ours, or one libvirt's accept rule may be in (ip/ip6 filter, libvirt's nftables tables).
            let touches = b.deletedFrom.contains { t in
                t == "inet \(table)" || t == "bridge \(table)" || t.hasPrefix("ip ") || t.hasPrefix("ip6 ")
                    || t.hasPrefix("inet libvirt")
            }
            guard touches else { continue }
            relevant = true
            let who = "pid \(b.pid)" + (b.process.isEmpty ? "" : " (\(b.process))")
            if !culprits.contains(who) { culprits.append(who) }
        }
        guard relevant, !scheduled else { return }
        scheduled = true
        firstNotice = monotonicMicros()
        agent.loop.schedule(afterMillis: Self.debounceMs) { [self] in
            let who = culprits.isEmpty ? "unknown (notifications were lost)" : culprits.joined(separator: ", ")
            let noticed = firstNotice
            culprits = []
            scheduled = false
            agent.work.async { [self] in check(agent, culprit: who, noticed: noticed) }
        }
    }

    /// On the work queue.
    private func check(_ agent: AgentContext, culprit: String, noticed: Int64) {
        let now = monotonicMicros() / 1000
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
        let began = monotonicMicros()
        defer {
            if agent.verbose {
                AgentLog.write("self-heal check (deletes by \(culprit)) took \((monotonicMicros() - began) / 1000) ms")
            }
        }
        do {
            healed = try agent.withResources { (r) throws(VirtPortError) in
                try Healer.heal(resources: r, diagnostics: CollectedDiagnostics())
            }
        } catch {
            agent.log.warning("agent: self-heal failed: \(error) (run 'virtport reconcile')")
            notBefore = 0
            return
        }
        heals.removeAll { $0 < now - Self.window }
        if healed.isEmpty {
            notBefore = 0
            return
        }
        heals.append(now)
        agent.metrics.healed()
        agent.metrics.event(source: "heal", micros: monotonicMicros() - noticed)
        agent.metrics.changed(agent)
        agent.log.notice("healed: \(healed.joined(separator: "; ")) (deleted by \(culprit))")
        agent.say("healed: \(healed.joined(separator: "; ")) (deleted by \(culprit))")
        if heals.count >= Self.stormHeals {
            backoffMs = min(max(backoffMs * 2, 1000), Self.maxBackoffMs)
            agent.log.warning("agent: virtport's rules were deleted \(heals.count) times in the last \(Self.window / 1000) s, "
                + "last by \(culprit): backing off, the next re-apply waits \(backoffMs / 1000) s. Another tool keeps "
                + "removing them (a firewall manager that owns the whole ruleset?): exclude table inet \(agent.config.table) there")
            notBefore = now + backoffMs
        } else {
            backoffMs = 0
            notBefore = 0
        }
    }
}
