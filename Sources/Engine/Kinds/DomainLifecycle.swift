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
/// | network started              | `networkStarted`      | exclusive | reapply(network)                 |
/// | self-heal                    | `heal`                | exclusive | heal                             |
/// | reconcile, doctor            | `Reconciler.run`      | exclusive | reconcile → fixes (pure) → apply |
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
                    throw .operational("nftables batch failed", cause: error)
                }
            }
            // Each kind's failure is its own: the others still finish and commit.
            var failure: VirtPortError?
            var done: [any StagedChange] = []
            for s in staged {
                do throws(VirtPortError) {
                    try s.afterBatch(sent: sent && s.batchPart != nil, db: db, lock: lock, context: context)
                    done.append(s)
                } catch {
                    failure = failure ?? error
                }
            }
            if staged.contains(where: \.touchesKernel) { crashPoint("after-kernel") }
            try db.transaction { () throws(VirtPortError) in
                for s in done { try s.commit(db: db) }
            }
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
            try eachKind(kinds) { (kind) throws(VirtPortError) in
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
            for kind in kinds { healed += try kind.heal(db: db, context: context) }
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

    /// Test-only fault injection (README "Crash tests"): `VIRTPORT_FAULT=after-intent|after-kernel`
    /// makes the process die right there, as a crash would.
    static func crashPoint(_ name: String) {
        if Environment.get("VIRTPORT_FAULT") == name { _exit(86) }
    }
}
