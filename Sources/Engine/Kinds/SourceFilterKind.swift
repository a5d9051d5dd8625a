public import Journal
import Netfilter
import POSIX
public import VirtPortCore

/// `source=` on `<portForward>`: per-forward source filters in `table inet <table>_src`
/// (README "Restricting a forward to some sources"). The first rule kind added after the
/// restructuring: this file, its table (Netfilter/SourceFilterTable.swift), its journal rows
/// (Journal/SourceFilters.swift) and its grammar (VirtPortCore/SourceList.swift).
///
/// The plan carries one `SourceFilter` per mapping of a forward with a list; the journal holds
/// them per domain; the kernel holds every domain's. It runs before the forwards in a start, so
/// when the shared batch is refused its own batch puts the filter in before the forwards' DNAT.
public struct SourceFilterKind: RuleKind {
    public init() {}

    public static let name = "source filters"
    public var name: String { Self.name }

    public func tables(_ config: Config) -> [String] { ["inet " + SourceFilterTable.name(config.table)] }

    /// Fail-closed: a forward with a list must never be reachable without its filter.
    public var guards: [String] { [ForwardKind.name] }

    /// The hold on `f`'s forward while the filter is not in place.
    static func hold(_ f: SourceFilter, domain: DomainRef, cause: String) -> Hold {
        let addr = f.hostAddress.map { $0.family == .ipv6 ? "[\($0)]" : "\($0)" } ?? "*"
        return Hold(kind: ForwardKind.name, domain: domain, key: f.identity,
                    what: "forward \(f.proto) \(addr)\(f.dev.map { "%\($0)" } ?? ""):\(f.ports)",
                    by: Self.name, cause: cause)
    }

    /// The filter table's state is unknown after a failed batch: every row is marked `adding`
    /// (each domain's next change rebuilds the table) and every filtered forward is held.
    public func failClosed(db: JournalDB, cause: String, context: KindContext) throws(VirtPortError) -> [Hold] {
        let rows = try db.sourceFilters()
        if rows.isEmpty { return [] }
        try db.transaction { () throws(VirtPortError) in
            for uuid in Set(rows.map(\.domain.uuid)) { try db.setSourceFilterState(domainUUID: uuid, .adding) }
        }
        return rows.map { Self.hold($0.filter, domain: $0.domain, cause: cause) }
    }
    public func tableOwners(base: String) -> [(family: String, table: String, owner: String)] {
        [("inet", SourceFilterTable.name(base), "virtport's source filter")]
    }

    /// `[policy] require_source_ports`: ports as numbers or strings, ranges as strings: [3389, "5900-5999"].
    public var configKeys: [KindConfigKey] {
        [KindConfigKey(ConfigKeys.Key(section: "policy", name: SourceList.policyKey, defaultValue: "[]",
                                      meaning: "host ports a forward may use only with a source= list (no /0 in it): [3389, \"5900-5999\"]"),
                       after: "guest_networks") { (value, bad, c) throws(VirtPortError) in
            guard case .array(let items) = value else { throw bad("expected an array of ports and port ranges") }
            c.policy.requireSourcePorts = try items.map { (v: Config.Value) throws(VirtPortError) -> PortRange in
                let s: String
                switch v {
                case .int(let n): s = "\(n)"
                case .string(let t): s = t
                default: throw bad("expected an array of ports and port ranges")
                }
                guard let r = Config.parsePortRange(s) else { throw bad("\"\(s)\" is not a port or port range (1-65535)") }
                return r
            }
        }]
    }

    public func needsChange(_ plan: Plan?, uuid: String, context: KindContext) throws(VirtPortError) -> Bool {
        if let plan, !plan.sourceFilters.isEmpty { return true }
        // A start opens the journal read-write anyway (the forwards' kind, next, always takes
        // part): open it so now, so a first start racing others never reads a journal that one
        // of them is still creating.
        if plan != nil { return try !context.resources.journal().sourceFilters(domainUUID: uuid).isEmpty }
        guard let db = try context.resources.existingJournal(readOnly: false) else { return false }
        return try !db.sourceFilters(domainUUID: uuid).isEmpty
    }

    public func stage(_ plan: Plan?, domain: DomainRef, reason: String, db: JournalDB,
                      context: KindContext) throws(VirtPortError) -> (any StagedChange)? {
        let before = try db.sourceFilters()
        let mine = before.filter { $0.domain.uuid == domain.uuid }
        let new = plan?.sourceFilters ?? []
        if Set(mine.map(\.filter)) == Set(new), mine.allSatisfy({ $0.state == .applied }) { return nil }
        let name = domain.name.isEmpty ? (mine.first?.domain.name ?? "") : domain.name
        let ref = DomainRef(name: name, uuid: domain.uuid)
        try db.putSourceFilters(domain: ref, new, state: .adding, reason: reason, now: nowMicros())
        let others = before.filter { $0.domain.uuid != domain.uuid }
        let all = others.map(\.filter) + new
        let part: SourceFilterBatchPart?
        if all.isEmpty || others.isEmpty && mine.isEmpty || mine.contains(where: { $0.state != .applied }) {
            // The first filter (the table is created), the last one (the table goes), or rows
            // a crash left half-done: the table is rebuilt with exactly what the journal holds.
            part = .rebuild(all)
        } else {
            part = .change(from: mine.map(\.filter), to: new, allBefore: before.map(\.filter), allAfter: all)
        }
        let change = SourceFilterChange(domain: ref, reason: reason, before: mine.map(\.filter), after: new, part: part,
                                        recovering: mine.contains { $0.state != .applied })
        // Open connections to cut exist only where the domain's forward was in the kernel before
        // this change (a live edit of its list): a start of forwards that were not reads nothing.
        let narrowed = change.narrowed
        if !narrowed.isEmpty {
            let live = try db.activeMappings(domainUUID: domain.uuid)
                .filter { $0.state != .pending && !$0.mapping.isPending }.map(\.mapping)
            change.cut = narrowed.filter { f in live.contains { $0.proto == f.proto && $0.hostPorts.overlaps(f.ports) } }
        }
        return change
    }

    /// libvirt's network restart leaves other tables alone; a firewall reload may not: the table
    /// is put back from the journal when it is gone.
    public func reapply(network: NetworkDefinition, db: JournalDB, reason: String, context: KindContext) throws(VirtPortError) {
        if let line = try Self.healLocked(db: db, context: context) { context.log.notice("healed: \(line) (\(reason))") }
    }

    public func heal(db: JournalDB, context: KindContext) throws(VirtPortError) -> [String] {
        try Self.healLocked(db: db, context: context).map { [$0] } ?? []
    }

    /// The journal is the truth: when the table lacks a counter the journal's filters need (the
    /// table or its elements deleted), or rows are not confirmed in the kernel (a failed batch:
    /// their forwards are held), it is rebuilt from the journal in one batch and the rows marked
    /// applied (the lifecycle then drops the holds: the forwards go back in).
    static func healLocked(db: JournalDB, context: KindContext) throws(VirtPortError) -> String? {
        let rows = try db.sourceFilters()
        let unconfirmed = rows.filter { $0.state != .applied }
        let problem: String
        if let damage = try damage(rows.map(\.filter), context: context) {
            problem = damage
        } else if !unconfirmed.isEmpty {
            problem = "\(unconfirmed.count) filter(s) not confirmed in the kernel"
        } else if try db.holds(kind: ForwardKind.name).contains(where: { $0.by == Self.name }) {
            problem = "forwards held"
        } else {
            return nil
        }
        try rebuild(rows.map(\.filter), context: context)
        if !unconfirmed.isEmpty {
            try db.transaction { () throws(VirtPortError) in
                for uuid in Set(unconfirmed.map(\.domain.uuid)) { try db.setSourceFilterState(domainUUID: uuid, .applied) }
            }
        }
        return "source filters: \(problem); table inet \(SourceFilterTable.name(context.config.table)) rebuilt with \(rows.count) filter(s)"
    }

    /// What `damage` says of a table whose rules are not this version's.
    static let oldLayout = "its rules are not this version's (an older virtport's layout, or flushed)"

    /// What is wrong with the table given `filters` (nil: nothing): its counters are the filters'
    /// (one per filter and family), read in one dump, and its rules this version's (one rule dump:
    /// a table an older virtport built, whose filter chain judged every packet, is rebuilt).
    static func damage(_ filters: [SourceFilter], context: KindContext) throws(VirtPortError) -> String? {
        guard let nf = try context.driver() as? NetfilterSession else { return nil }
        let present: Set<String>
        let table = "table inet \(SourceFilterTable.name(context.config.table))"
        do { present = Set(try nf.sourceFilterCounters().map(\.name)) } catch {
            throw .operational("cannot read \(table)", cause: error)
        }
        let wanted = Set(filters.flatMap { f in f.families.map(f.counterName) })
        if wanted.isEmpty { return present.isEmpty ? nil : "\(present.count) counter(s) no forward owns" }
        if present.isEmpty { return "\(table) is missing" }
        let missing = wanted.subtracting(present), extra = present.subtracting(wanted)
        if missing.isEmpty && extra.isEmpty {
            do { return try nf.sourceFilterSkeletonIsIntact() ? nil : oldLayout } catch {
                throw .operational("cannot read \(table)", cause: error)
            }
        }
        return "counters " + (missing.sorted().first.map { "\($0) missing" } ?? "\(extra.sorted()[0]) not in the journal")
    }

    /// Rebuilds the table with `filters` in one batch (no moment without a filter: the old table
    /// goes in the batch that creates the new one), then cuts the connections they do not allow
    /// (one may have opened while a filter was missing).
    static func rebuild(_ filters: [SourceFilter], context: KindContext) throws(VirtPortError) {
        do { try context.driver().send([SourceFilterBatchPart.rebuild(filters)]) } catch {
            throw .operational("cannot rebuild table inet \(SourceFilterTable.name(context.config.table))", cause: error)
        }
        cutFlows(outside: filters, context: context)
    }

    /// Deletes the conntrack entries of connections `filters` do not allow
    /// (`NetfilterSession.cutFlows`): a failure is a warning, never the change's failure (the
    /// filters are in place for new connections; only open ones linger).
    static func cutFlows(outside filters: [SourceFilter], context: KindContext) {
        guard !filters.isEmpty, let nf = try? context.driver() as? NetfilterSession else { return }
        let started = MonotonicClock.micros()
        do {
            let done = try nf.cutFlows(outside: filters)
            if done.deleted == 0 { return }
            context.log.info("conntrack: \(done.deleted) connections of clients no source= list allows deleted in "
                + "\(MonotonicClock.micros() - started) us" + (done.walks > 0 ? " (\(done.walks) table dumps)" : ""))
        } catch {
            context.warnings.emit("cannot delete the connection tracking entries of clients a source= list no longer "
                + "allows: \(error); their open connections go on until they end")
        }
    }

    public func reconcile(running: [String: RunningDomain], db: JournalDB?, reason: String,
                          context: KindContext) throws(VirtPortError) -> any KindReconcile {
        guard let db else { return SourceFilterReconcile() }
        let rows = try db.sourceFilters()
        var wanted: [String: (DomainRef, [SourceFilter])] = [:]
        for (uuid, r) in running {
            guard let domain = r.domain else {
                // Unreadable XML: its rows stay as they are.
                let kept = rows.filter { $0.domain.uuid == uuid }
                if !kept.isEmpty { wanted[uuid] = (kept[0].domain, kept.map(\.filter)) }
                continue
            }
            // Invalid metadata: the forwards' part reports it.
            guard let plan = try? Planner.plan(domain: domain, resolver: context.files, policy: context.config.policy) else { continue }
            if !plan.sourceFilters.isEmpty { wanted[uuid] = (DomainRef(name: domain.name, uuid: uuid), plan.sourceFilters) }
        }
        let damage = try Self.damage(rows.map(\.filter), context: context)
        return SourceFilterReconcile.make(rows: rows, wanted: wanted, damage: damage,
                                          table: SourceFilterTable.name(context.config.table), reason: reason)
    }

    public func removeEverything(db: JournalDB?, reason: String, context: KindContext) throws(VirtPortError) -> Int {
        do { try context.driver().send([SourceFilterBatchPart.rebuild([])]) } catch {
            throw .operational("cannot delete table inet \(SourceFilterTable.name(context.config.table))", cause: error)
        }
        guard let db else { return 0 }
        let rows = try db.sourceFilters()
        for uuid in Set(rows.map(\.domain.uuid)).sorted() {
            let domain = rows.first { $0.domain.uuid == uuid }!.domain
            try db.putSourceFilters(domain: domain, [], state: .applied, reason: reason, now: nowMicros())
        }
        return rows.count
    }

    public func removedLine(count: Int, config: Config) -> String {
        "removed: \(count) source filter(s) and table inet \(SourceFilterTable.name(config.table))"
    }
}

/// One domain's source filters on their way: intent rows written, the part in the shared batch.
final class SourceFilterChange: StagedChange {
    let domain: DomainRef
    let reason: String
    let before: [SourceFilter]
    let after: [SourceFilter]
    let part: SourceFilterBatchPart?
    /// Rows a failed batch or a crash left unconfirmed: their forwards may be held.
    let recovering: Bool
    /// The filters whose forwards' open connections are checked after the kernel change: those
    /// that `narrowed` on a forward the kernel already held.
    var cut: [SourceFilter] = []

    init(domain: DomainRef, reason: String, before: [SourceFilter], after: [SourceFilter], part: SourceFilterBatchPart?,
         recovering: Bool = false) {
        self.domain = domain
        self.reason = reason
        self.before = before
        self.after = after
        self.part = part
        self.recovering = recovering
    }

    var batchPart: (any BatchPart)? { part }
    var touchesKernel: Bool { part != nil }

    /// The shared batch refused (a table missing, someone's edit), or a table in an older
    /// virtport's layout changed: the table is rebuilt from the journal, which holds this change's
    /// intent, under the exclusive lock (no other change between the read and the batch). Then
    /// the connections a narrowed list no longer allows are cut: the table judges first packets
    /// only.
    func afterBatch(sent: Bool, db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) {
        guard let part else { return }
        var outdated = false
        if sent, !part.rebuildsTable, !after.isEmpty, let nf = try context.driver() as? NetfilterSession {
            // One rule dump: a table an older virtport built still filters (it judged every
            // packet), and is now rebuilt in this version's layout in one batch.
            do { outdated = try !nf.sourceFilterSkeletonIsIntact() } catch {
                throw .operational("cannot read table inet \(nf.sourceFilterTable)", cause: error)
            }
        }
        if !sent || outdated {
            try lock.convertToExclusive()
            try SourceFilterKind.rebuild(try db.sourceFilters().map(\.filter), context: context)
            if outdated {
                context.log.notice("healed: source filters: \(SourceFilterKind.oldLayout); table inet "
                    + "\(SourceFilterTable.name(context.config.table)) rebuilt from the journal in one batch")
            }
            return
        }
        // A conntrack cleanup: in the agent after the hook's answer, still under this change's
        // lock (`Resources.later`), so the domain's next change comes after it.
        if cut.isEmpty { return }
        let cut = self.cut
        context.resources.later { SourceFilterKind.cutFlows(outside: cut, context: context) }
    }

    /// The filters of `after` that allow less than before: a list given to a forward, or one that
    /// lost a prefix (or changed it). Their connections are checked against the new list.
    var narrowed: [SourceFilter] {
        let was = Dictionary(before.map { ($0.identity, Set($0.prefixes)) }, uniquingKeysWith: { a, _ in a })
        return after.filter { f in was[f.identity].map { !$0.isSubset(of: Set(f.prefixes)) } ?? true }
    }

    func commit(db: JournalDB) throws(VirtPortError) {
        try db.setSourceFilterState(domainUUID: domain.uuid, .applied)
        if recovering { try db.clearHolds(by: SourceFilterKind.name, domainUUID: domain.uuid) }
    }

    /// Not in place: the forwards whose filter this change adds or changes are held (a changed
    /// list too: the kernel may hold the old one, wider). A refused batch changed nothing, so a
    /// filter already applied and unchanged still protects its forward — unless the domain's rows
    /// were unconfirmed before (`recovering`): then every forward of the domain with a list is held.
    func holds(cause: String) -> [Hold] {
        let was = Dictionary(before.map { ($0.identity, $0) }, uniquingKeysWith: { a, _ in a })
        let unsure = recovering ? after : after.filter { was[$0.identity] != $0 }
        return unsure.map { SourceFilterKind.hold($0, domain: domain, cause: cause) }
    }

    func finish(db: JournalDB, context: KindContext) {
        let name = Quoted.message(domain.name)
        let was = Dictionary(before.map { ($0.identity, $0) }, uniquingKeysWith: { a, _ in a })
        for f in after where was[f.identity] != f {
            context.log.info("source filter on: domain '\(name)' \(f.proto) \(f.ports) source=\"\(f.text)\" (\(reason))")
        }
        let now = Set(after.map(\.identity))
        for f in before where !now.contains(f.identity) {
            context.log.info("source filter off: domain '\(name)' \(f.proto) \(f.ports) (\(reason))")
        }
    }
}

/// Reconcile's plan for the source filters: the journal's rows made the running domains' planned
/// filters, and the table rebuilt from them when it or the rows differ. Decided with no I/O.
public struct SourceFilterReconcile: KindReconcile {
    public var fixes: [Fix] = []
    /// The rows per domain after the fix (a domain with none: its rows go).
    var rows: [(DomainRef, [SourceFilter])] = []
    var rebuild = false
    var reason = "reconcile"

    public init() {}

    static func make(rows: [SourceFilterRow], wanted: [String: (DomainRef, [SourceFilter])], damage: String?,
                     table: String, reason: String) -> SourceFilterReconcile {
        var p = SourceFilterReconcile()
        p.reason = reason
        let uuids = Set(rows.map(\.domain.uuid)).union(wanted.keys).sorted()
        for uuid in uuids {
            let have = rows.filter { $0.domain.uuid == uuid }
            let want = wanted[uuid]?.1 ?? []
            let domain = wanted[uuid]?.0 ?? have[0].domain
            if Set(have.map(\.filter)) != Set(want) || have.contains(where: { $0.state != .applied }) {
                p.rows.append((domain, want))
                let what = want.isEmpty ? "source filters" : "source filters: " + want.map { "\($0.proto) \($0.ports) source=\"\($0.text)\"" }.joined(separator: ", ")
                p.fixes.append(Fix(want.isEmpty ? .removeMapping : .addMapping, domain: domain.name, what: what,
                                   reason: want.isEmpty ? "no running domain declares them"
                                       : Set(have.map(\.filter)) == Set(want) ? "not confirmed in the kernel (a failed batch or a crash): their forwards are held"
                                       : "the journal differs from the domain's source= lists",
                                   kind: SourceFilterKind.name,
                                   explanation: want.isEmpty
                                       ? "source filters of a VM that is not running are still in place"
                                       : "a running VM's source= lists are not the ones in place: clients it allows may be dropped, or ones it does not allowed"))
            }
        }
        if let damage {
            let explanation = damage == SourceFilterKind.oldLayout
                ? "the table's rules are not this version's: an older virtport's layout still filters (judging every "
                    + "packet, which costs more), flushed rules filter nothing and their forwards may be open to every client"
                : "the source filters the journal holds are not all in the kernel (\(damage)): "
                    + "their forwards may be open to every client"
            p.fixes.append(Fix(.rebuildTable, domain: nil, what: "table inet \(table)", reason: damage, kind: SourceFilterKind.name,
                               explanation: explanation))
        }
        p.rebuild = damage != nil || !p.rows.isEmpty
        return p
    }

    public func apply(db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) -> [Fix] {
        for (domain, filters) in rows {
            try db.putSourceFilters(domain: domain, filters, state: .adding, reason: reason, now: nowMicros())
        }
        if rebuild {
            try SourceFilterKind.rebuild(try db.sourceFilters().map(\.filter), context: context)
            for (domain, _) in rows { try db.setSourceFilterState(domainUUID: domain.uuid, .applied) }
        }
        return fixes
    }
}
