import Engine
import Netfilter
import POSIX
import Synchronization
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
final class HealWatcher: Watcher {
    let name = "nf_tables notifications"
    static let debounceMs: Int64 = 20
    static let maxSettleMs: Int64 = 250
    static let window: Int64 = 60_000
    static let stormHeals = 3
    static let stormReorders = 10
    static let maxBackoffMs: Int64 = 300_000

    /// Opens the notification source (the kernel's, `NftablesMonitor`; unit tests hand in a fake).
    private let open: @Sendable () throws(VirtPortError) -> any CommitSource
    /// One check, on the work queue: puts back what is missing (only libvirt's accept rule's place
    /// with `acceptRulesOnly`) and returns what it put back (`Healer`; unit tests record calls).
    private let heal: @Sendable (AgentContext, _ acceptRulesOnly: Bool) throws(VirtPortError) -> [String]
    /// On the loop thread only: the source, and the notices waiting for the changes to settle.
    private let loopSide = Locked(LoopSide())
    /// On the work queue only: recent heals and the back-off.
    private let storm = Mutex(StormGuard())

    private struct LoopSide {
        var source: (any CommitSource)?
        var settling = Settling()
    }

    init(open: @escaping @Sendable () throws(VirtPortError) -> any CommitSource = HealWatcher.kernelSource,
         heal: @escaping @Sendable (AgentContext, Bool) throws(VirtPortError) -> [String] = HealWatcher.healer) {
        self.open = open
        self.heal = heal
    }

    /// nf_tables' own notifications.
    @Sendable static func kernelSource() throws(VirtPortError) -> any CommitSource {
        do { return try NftablesMonitor() } catch {
            throw .operational("cannot listen to nf_tables notifications", cause: error)
        }
    }

    /// `Healer` on the work queue's warm resources.
    @Sendable static func healer(_ agent: AgentContext, acceptRulesOnly: Bool) throws(VirtPortError) -> [String] {
        try agent.withResources { (r) throws(VirtPortError) in
            acceptRulesOnly ? try Healer.healAcceptRules(resources: r, diagnostics: CollectedDiagnostics())
                : try Healer.heal(resources: r, diagnostics: CollectedDiagnostics())
        }
    }

    func start(_ agent: AgentContext) throws(VirtPortError) {
        let source = try open()
        let fd = source.descriptor
        loopSide.withLock { $0.source = source }
        try agent.loop.watch(fd) { [self] in readable(agent) }
        // libvirt's accept rule, displaced while no agent watched (libvirt rebuilt its firewall
        // while the agent was being restarted, by a package upgrade say), is put right now, not at
        // the next notification. Only that: the rest is the start-up reconcile's business.
        let started = MonotonicClock.micros()
        agent.work.async { [self] in
            check(agent, culprit: "found when the agent started", noticed: started, acceptRulesOnly: true)
        }
    }

    /// Whether `c` may have taken away or displaced something of virtport's: a deletion from its
    /// tables or from a table where libvirt's accept rule may live, or a rule inserted into a chain
    /// where that rule lives (which may now come first).
    /// - Returns: who did what, for the log, and whether it deleted (then everything is checked;
    ///   an insertion can only have displaced libvirt's accept rule, so only that is).
    /// `tables`: every rule kind's (`DomainLifecycle.tables`).
    static func relevant(_ c: NftablesMonitor.Commit, tables: Set<String>) -> (who: String, deleted: Bool)? {
        let deleted = c.deletedFrom.contains { t in
            tables.contains(t) || t.hasPrefix("ip ") || t.hasPrefix("ip6 ")
                || t.hasPrefix("inet libvirt")
        }
        if deleted { return ("deleted by \(c.committer)", true) }
        if !c.addedTo.isDisjoint(with: LibvirtChains.acceptRuleChains) { return ("rules inserted by \(c.committer)", false) }
        return nil
    }

    /// On the loop.
    private func readable(_ agent: AgentContext) {
        let tables = DomainLifecycle.tables(agent.config)
        let now = MonotonicClock.micros()
        let first = loopSide.withLock { side -> Bool in
            guard let (commits, overrun) = side.source?.read() else { return false }
            let notices = commits.filter { !OwnCommits.committed($0) }.compactMap { Self.relevant($0, tables: tables) }
            return side.settling.notice(notices, overrun: overrun, now: now)
        }
        if first { agent.loop.schedule(afterMillis: Self.debounceMs) { [self] in settled(agent) } }
    }

    /// On the loop: the check runs once nothing relevant came for `debounceMs` (a rebuild in
    /// progress is waited for), or `maxSettleMs` after the first notice at the latest.
    private func settled(_ agent: AgentContext) {
        let now = MonotonicClock.micros()
        switch loopSide.withLock({ $0.settling.settled(now: now) }) {
        case .wait(let ms):
            agent.loop.schedule(afterMillis: ms) { [self] in settled(agent) }
        case .check(let who, let noticed, let full):
            agent.work.async { [self] in check(agent, culprit: who, noticed: noticed, acceptRulesOnly: !full) }
        }
    }

    /// On the work queue.
    private func check(_ agent: AgentContext, culprit: String, noticed: Int64, acceptRulesOnly: Bool = false) {
        let now = MonotonicClock.micros() / 1000
        switch storm.withLock({ $0.admit(now: now) }) {
        case .skip:
            return  // a deferred check is due; it looks at everything
        case .deferred(let ms):
            agent.loop.schedule(afterMillis: ms) {
                agent.work.async { [self] in
                    storm.withLock { $0.deferredDue() }
                    check(agent, culprit: culprit, noticed: noticed)
                }
            }
            return
        case .run:
            break
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
        do { healed = try heal(agent, acceptRulesOnly) } catch {
            // Retried with a doubling delay (1 s … 5 min) until a check succeeds: what it could not
            // put back — a forward held because its source filter could not go in — is completed
            // once the cause is gone, even without another deletion to notice.
            let retry = storm.withLock { $0.failed() }
            agent.log.warning("agent: self-heal failed: \(error) (retried in \(retry.ms / 1000) s; or run 'virtport reconcile')")
            if retry.schedule {
                agent.loop.schedule(afterMillis: retry.ms) {
                    agent.work.async { [self] in
                        storm.withLock { $0.retryDue() }
                        check(agent, culprit: "retry after a failed self-heal", noticed: MonotonicClock.micros())
                    }
                }
            }
            return
        }
        let outcome = storm.withLock { $0.record(healed: healed, now: now) }
        guard let outcome else { return }
        agent.metrics.healed()
        agent.metrics.event(source: "heal", micros: MonotonicClock.micros() - noticed)
        agent.metrics.changed(agent)
        let line = "healed: \(healed.joined(separator: "; ")) (\(culprit))"
        agent.log.notice(line)
        agent.say(line)
        if let backoff = outcome.backoffMs {
            let reorderOnly = outcome.reorderOnly
            agent.log.warning("agent: virtport's rules were \(reorderOnly ? "displaced" : "deleted") \(outcome.count) times in the last "
                + "\(Self.window / 1000) s, last \(culprit): backing off, the next re-apply waits \(backoff / 1000) s. "
                + "Another tool keeps \(reorderOnly ? "inserting rules above them" : "removing them") (a firewall manager "
                + "that owns the whole ruleset?): exclude table inet \(agent.config.table) there")
        }
    }

    /// Notices on the loop thread, until the changes settle: who changed what, whether anything
    /// was deleted, when the first and the last notice came (CLOCK_MONOTONIC µs).
    struct Settling: Equatable {
        var scheduled = false
        var culprits: [String] = []
        /// Something relevant was deleted (or notifications were lost): a full check, not only the
        /// accept rule's place.
        var deletions = false
        var firstNotice: Int64 = 0
        var lastNotice: Int64 = 0

        /// Records `notices` (and a lost-notification overrun) read at `now`; returns true when
        /// this is the first relevant one since the last check (schedule `settled` then).
        mutating func notice(_ notices: [(who: String, deleted: Bool)], overrun: Bool, now: Int64) -> Bool {
            var relevant = overrun
            if overrun { deletions = true }
            for (who, deleted) in notices {
                relevant = true
                if deleted { deletions = true }
                if !culprits.contains(who) { culprits.append(who) }
            }
            guard relevant else { return false }
            lastNotice = now
            guard !scheduled else { return false }
            scheduled = true
            firstNotice = now
            return true
        }

        enum Settled: Equatable {
            /// Changes are still coming: look again in this many ms.
            case wait(Int64)
            /// Check now: who changed what (for the log), when it was first noticed (µs), and
            /// whether everything is checked (a deletion) or only the accept rule's place.
            case check(culprit: String, noticed: Int64, full: Bool)
        }

        mutating func settled(now: Int64) -> Settled {
            let quietMs = (now - lastNotice) / 1000, sinceFirstMs = (now - firstNotice) / 1000
            if quietMs < HealWatcher.debounceMs && sinceFirstMs < HealWatcher.maxSettleMs {
                return .wait(min(HealWatcher.debounceMs - quietMs, HealWatcher.maxSettleMs - sinceFirstMs))
            }
            let who = culprits.isEmpty ? "unknown (notifications were lost)"
                : culprits.prefix(3).joined(separator: ", ") + (culprits.count > 3 ? " and \(culprits.count - 3) more batches" : "")
            defer { self = Settling() }
            return .check(culprit: who, noticed: firstNotice, full: deletions)
        }
    }

    /// The heals of the last minute and the back-off, on the work queue: it never fights another
    /// tool forever (CLOCK_MONOTONIC ms).
    struct StormGuard: Equatable {
        var heals: [Int64] = []
        var reorders: [Int64] = []
        var backoffMs: Int64 = 0
        var notBefore: Int64 = 0
        /// A check is deferred to `notBefore`; checks before it are dropped (it looks at everything).
        var deferred = false

        enum Admission: Equatable {
            case run
            /// Backing off: check again in this many ms.
            case deferred(Int64)
            /// A deferred check is already due.
            case skip
        }

        mutating func admit(now: Int64) -> Admission {
            if deferred { return .skip }
            if now < notBefore {
                deferred = true
                return .deferred(notBefore - now)
            }
            return .run
        }

        mutating func deferredDue() { deferred = false }

        /// The delay of the next retry after a failed check (doubling, reset by a check that
        /// succeeds), and whether one is already scheduled.
        var retryMs: Int64 = 0
        var retryScheduled = false

        /// After a failed check: when to try again, and whether to schedule it (not when a retry
        /// is already scheduled: one chain of retries).
        mutating func failed() -> (ms: Int64, schedule: Bool) {
            notBefore = 0
            retryMs = min(max(retryMs * 2, 1000), HealWatcher.maxBackoffMs)
            if retryScheduled { return (retryMs, false) }
            retryScheduled = true
            return (retryMs, true)
        }

        mutating func retryDue() { retryScheduled = false }

        struct Healed: Equatable {
            var reorderOnly: Bool
            /// Heals (or reorders) within the window, this one included.
            var count: Int
            /// Set when this heal starts (or doubles) a back-off.
            var backoffMs: Int64?
        }

        /// After a check that put back `healed` at `now`: nil when it found nothing.
        mutating func record(healed: [String], now: Int64) -> Healed? {
            heals.removeAll { $0 < now - HealWatcher.window }
            reorders.removeAll { $0 < now - HealWatcher.window }
            retryMs = 0
            if healed.isEmpty {
                notBefore = 0
                return nil
            }
            let reorderOnly = healed.allSatisfy(Healer.isReorder)
            if reorderOnly { reorders.append(now) } else { heals.append(now) }
            let count = reorderOnly ? reorders.count : heals.count
            if heals.count >= HealWatcher.stormHeals || reorders.count >= HealWatcher.stormReorders {
                backoffMs = min(max(backoffMs * 2, 1000), HealWatcher.maxBackoffMs)
                notBefore = now + backoffMs
                return Healed(reorderOnly: reorderOnly, count: count, backoffMs: backoffMs)
            }
            backoffMs = 0
            notBefore = 0
            return Healed(reorderOnly: reorderOnly, count: count, backoffMs: nil)
        }
    }
}

/// What `HealWatcher` reads on the loop thread: committed nf_tables transactions.
protocol CommitSource: AnyObject {
    /// Readable when commits are queued.
    var descriptor: FileDescriptor { get }
    /// What is queued now (without blocking), and whether notifications were lost.
    func read() -> (commits: [NftablesMonitor.Commit], overrun: Bool)
}

extension NftablesMonitor: CommitSource {}
