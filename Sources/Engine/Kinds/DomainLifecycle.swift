#if canImport(Glibc)
import Glibc
#endif
import Journal
import Netfilter
import POSIX
public import VirtPortCore

/// Every lifecycle step, for every rule kind (`RuleKinds.all`), never naming one:
///
/// | step                         | entry                 | lock      | per kind                         |
/// |------------------------------|-----------------------|-----------|----------------------------------|
/// | start, reconnect, agent sync | `change(plan)`        | shared    | needsChange → stage → one batch → afterBatch → commit → finish (after the answer in the agent) |
/// | stopped, release             | `change(nil)`         | shared    | the same, the plan being "nothing" |
/// | network started              | `networkStarted`      | exclusive | reapply(network), failClosed     |
/// | self-heal                    | `heal`                | exclusive | heal, failClosed                 |
/// | reconcile, doctor            | `Reconciler.run`      | exclusive | reconcile → fixes (pure) → apply, failClosed |
/// | uninstall                    | `removeEverything`    | exclusive | removeEverything                 |
///
/// A domain's start or stop is one change lock (shared), one journal transaction for every
/// kind's intents, one netlink batch for every kind's kernel part, one transaction for the commits.
public enum DomainLifecycle {
    /// Brings the domain's rules of every kind to `plan` (nil: the domain stopped, everything it
    /// has goes). Idempotent. A kind whose `needsChange` is false costs nothing more.
    /// - Parameters:
    ///   - uuid: the domain's; `name` may be empty for a stop (the rows know it).
    public static func change(_ plan: Plan?, uuid: String, name: String, reason: String, resources: Resources,
                              diagnostics: any Diagnostics, files: LibvirtFiles? = nil,
                              kinds: [any RuleKind] = RuleKinds.all) throws(VirtPortError) {
        // A stop without a journal has nothing to take down.
        if plan == nil, try resources.existingJournal(readOnly: false) == nil { return }
        let context = KindContext(resources: resources, diagnostics: diagnostics, files: files, kinds: kinds)
        var involved: [any RuleKind] = []
        for kind in kinds where try kind.needsChange(plan, uuid: uuid, context: context) {
            involved.append(kind)
            // Opened read-write now, so the next kinds' reads share the connection.
            if plan != nil { _ = try resources.journal() }
        }
        if involved.isEmpty { return }
        let db = try resources.journal()
        let lock = try resources.changeLock()
        // Held shared to the end of the change, or, with work left for after the answer (the
        // agent: `Resources.later`), to the end of that work.
        try lock.takeShared()
        defer { resources.endChange(holding: lock) }
        do {
            let domain = DomainRef(name: name, uuid: uuid)
            var staged: [any StagedChange] = []
            try db.transaction { () throws(VirtPortError) in
                for kind in involved {
                    if let s = try kind.stage(plan, domain: domain, reason: reason, db: db, context: context) { staged.append(s) }
                }
            }
            if staged.isEmpty { return }
            crashPoint("after-intent")
            let parts = staged.compactMap(\.batchPart)
            var sent = false
            if !parts.isEmpty {
                let nf = try context.driver()
                // Refused for something a kind recovers from (a table or element missing, EEXIST
                // races): nothing of it applied; each kind then sends its own batch with its own
                // recovery. Anything else (EPERM…) is the change's failure, intents left for reconcile.
                do throws(NetfilterError) {
                    try nf.send(parts)
                    sent = true
                } catch where error.all.allSatisfy({ $0.isMissingObject || $0.isExists }) {
                } catch {
                    let failure = VirtPortError.operational("nftables batch failed", cause: error)
                    try failClosed(staged, cause: failure.description, db: db, lock: lock, context: context)
                    throw failure
                }
            }
            // Each kind's failure is its own: the others still finish and commit, except what
            // needed the failed kind's rules (fail-closed: `holds`, handed to the later kinds).
            var failure: VirtPortError?
            var done: [any StagedChange] = []
            var holds: [Hold] = []
            for s in staged {
                if !holds.isEmpty { s.hold(holds) }
                do throws(VirtPortError) {
                    try s.afterBatch(sent: sent && s.batchPart != nil, db: db, lock: lock, context: context)
                    done.append(s)
                } catch {
                    failure = failure ?? error
                    holds += s.holds(cause: error.description)
                }
            }
            if staged.contains(where: \.touchesKernel) { crashPoint("after-kernel") }
            try db.transaction { () throws(VirtPortError) in
                for s in done { try s.commit(db: db) }
                if !holds.isEmpty { try db.putHolds(holds, now: nowMicros()) }
            }
            // Held forwards are the hook's to report: before the answer.
            if !holds.isEmpty { logHolds(holds, context: context) }
            // Logs and late cleanups: nothing the hook's caller waits for (after the answer, in the agent).
            let finished = done
            resources.later { for s in finished { s.finish(db: db, context: context) } }
            if let failure { throw failure }
        }
    }

    /// Network `started`: libvirt has just rebuilt its own rules (often a firewall reload that may
    /// have flushed ours too): every kind puts back what it has on that network. Every kind is
    /// tried; the first failure is thrown.
    public static func networkStarted(_ network: NetworkDefinition, reason: String, resources: Resources,
                                      diagnostics: any Diagnostics, kinds: [any RuleKind] = RuleKinds.all) throws(VirtPortError) {
        guard let db = try resources.existingJournal(readOnly: false) else { return }
        let context = KindContext(resources: resources, diagnostics: diagnostics, kinds: kinds)
        try resources.changeLock().withExclusive { () throws(VirtPortError) in
            try eachKind(kinds, failClosed: db, reason: reason, context: context) { (kind) throws(VirtPortError) in
                try kind.reapply(network: network, db: db, reason: reason, context: context)
            }
        }
    }

    /// The agent's self-heal: every kind puts back, from the journal, what someone took away.
    /// - Returns: one line per thing put back.
    public static func heal(resources: Resources, diagnostics: any Diagnostics,
                            kinds: [any RuleKind] = RuleKinds.all) throws(VirtPortError) -> [String] {
        guard let db = try resources.existingJournal(readOnly: false) else { return [] }
        let context = KindContext(resources: resources, diagnostics: diagnostics, kinds: kinds)
        return try resources.changeLock().withExclusive { () throws(VirtPortError) -> [String] in
            var healed: [String] = []
            try eachKind(kinds, failClosed: db, reason: "heal", context: context) { (kind) throws(VirtPortError) in
                healed += try kind.heal(db: db, context: context)
            }
            return healed
        }
    }

    /// `virtport uninstall`: every kind takes down everything it holds, with history. Every kind is
    /// tried; the first failure is thrown.
    /// - Returns: per kind, the line saying what went.
    public static func removeEverything(reason: String, resources: Resources, diagnostics: any Diagnostics,
                                        kinds: [any RuleKind] = RuleKinds.all) throws(VirtPortError) -> [String] {
        let context = KindContext(resources: resources, diagnostics: diagnostics, kinds: kinds)
        var lines: [String] = []
        let each = { (db: JournalDB?) throws(VirtPortError) in
            try eachKind(kinds) { (kind) throws(VirtPortError) in
                let count = try kind.removeEverything(db: db, reason: reason, context: context)
                lines.append(kind.removedLine(count: count, config: resources.config))
            }
        }
        // No journal, but tables may still be there (a journal moved aside, a crash).
        guard let db = try resources.existingJournal(readOnly: false) else {
            try each(nil)
            return lines
        }
        try resources.changeLock().withExclusive { () throws(VirtPortError) in try each(db) }
        return lines
    }

    /// The nf_tables tables every kind keeps (`"inet virtport"`, `"bridge virtport"`): the agent
    /// watches deletions there.
    public static func tables(_ config: Config, kinds: [any RuleKind] = RuleKinds.all) -> Set<String> {
        Set(kinds.flatMap { $0.tables(config) })
    }

    static func eachKind(_ kinds: [any RuleKind], _ body: (any RuleKind) throws(VirtPortError) -> Void) throws(VirtPortError) {
        var failure: VirtPortError?
        for kind in kinds {
            do throws(VirtPortError) { try body(kind) } catch { failure = failure ?? error }
        }
        if let failure { throw failure }
    }

    /// `eachKind` for the steps that put back from the journal (heal, network started, reconcile;
    /// exclusive lock held), fail-closed: a kind that failed holds the elements of the kinds it
    /// guards (`RuleKind.failClosed`, written before those kinds run); one that succeeded has its
    /// rules in place, so its holds go (the held kinds, later, put their elements back).
    static func eachKind(_ kinds: [any RuleKind], failClosed db: JournalDB, reason: String, context: KindContext,
                         _ body: (any RuleKind) throws(VirtPortError) -> Void) throws(VirtPortError) {
        var failure: VirtPortError?
        var released: [Hold] = []
        var succeeded: [any RuleKind] = []
        for kind in kinds {
            do throws(VirtPortError) {
                try body(kind)
                succeeded.append(kind)
                if !kind.guards.isEmpty { released += try db.clearHolds(by: kind.name) }
            } catch {
                failure = failure ?? error
                if kind.guards.isEmpty { continue }
                do throws(VirtPortError) {
                    let holds = try kind.failClosed(db: db, cause: error.description, context: context)
                    try db.putHolds(holds, now: nowMicros())
                    logHolds(holds, context: context)
                } catch let inner {
                    // Holds that cannot be written: the kinds it guards must not run at all.
                    context.warnings.emit("\(kind.name): cannot hold what depends on it: \(inner.message)")
                    throw error
                }
            }
        }
        // The held kinds whose step succeeded put the released elements in: their intents complete.
        if !released.isEmpty {
            for kind in succeeded {
                let mine = released.filter { $0.kind == kind.name }
                if !mine.isEmpty { try kind.released(mine, db: db, reason: reason, context: context) }
            }
        }
        if let failure { throw failure }
    }

    /// The shared batch refused for good (nothing of it applied, intents left for reconcile):
    /// what a guarding kind's part was to protect must not stay in the kernel unprotected (a
    /// forward, applied and open to all, that this change gives a list). Holds, and each change
    /// takes its held elements out (`StagedChange.withdraw`).
    static func failClosed(_ staged: [any StagedChange], cause: String, db: JournalDB, lock: ChangeLock,
                           context: KindContext) throws(VirtPortError) {
        let holds = staged.flatMap { $0.holds(cause: cause) }
        if holds.isEmpty { return }
        for s in staged {
            s.hold(holds)
            do throws(VirtPortError) { try s.withdraw(db: db, lock: lock, context: context) } catch {
                context.warnings.emit("cannot take held elements out of the kernel: \(error)")
            }
        }
        try db.transaction { () throws(VirtPortError) in try db.putHolds(holds, now: nowMicros()) }
        logHolds(holds, context: context)
    }

    /// One warning (stderr or the agent's reply, and the system log) per held element: the VM,
    /// the forward, the cause, and what completes it.
    static func logHolds(_ holds: [Hold], context: KindContext) {
        for h in holds {
            context.warnings.emit(h.line + "; held out of the kernel until `virtport reconcile` or the agent's self-heal puts it in place")
        }
    }

    /// Test-only fault injection (README "Crash tests"): `VIRTPORT_FAULT=after-intent|after-kernel`
    /// makes the process die right there, as a crash would.
    static func crashPoint(_ name: String) {
        if Environment.get("VIRTPORT_FAULT") == name { _exit(86) }
    }
}
