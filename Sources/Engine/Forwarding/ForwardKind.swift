public import Journal
import Netfilter
public import VirtPortCore

/// Port forwards as a rule kind: `table inet <table>` (DNAT maps, hairpin sets), libvirt's accept
/// rule, connection tracking of removed forwards. The work is `Forwarder`'s; this is its face to
/// the lifecycle.
public struct ForwardKind: RuleKind {
    public static let name = "forwards"
    public var name: String { Self.name }
    public init() {}

    public func tables(_ config: Config) -> [String] { ["inet \(config.table)"] }
    public func tableOwners(base: String) -> [(family: String, table: String, owner: String)] { [("inet", base, "virtport's forwards")] }

    /// A start always goes through the journal (a domain without forwards may have rows to drop);
    /// a stop has nothing to do without a journal (the lifecycle checks that for every kind).
    public func needsChange(_ plan: Plan?, uuid: String, context: KindContext) throws(VirtPortError) -> Bool { true }

    public func stage(_ plan: Plan?, domain: DomainRef, reason: String, db: JournalDB,
                      context: KindContext) throws(VirtPortError) -> (any StagedChange)? {
        let forwarder = Forwarder(context: context)
        let change: ForwardChange
        if let plan {
            change = try forwarder.stageApply(plan, reason: reason, db: db)
        } else {
            guard let removal = try forwarder.stageRemove(domainUUID: domain.uuid, reason: reason, db: db) else { return nil }
            change = removal
        }
        if let (adding, removing, needs) = change.kernel {
            do {
                change.batchPart = try context.driver().forwardPart(
                    adding: adding, removing: removing, hairpinAdding: needs.hairpin(needs.families.keys),
                    hairpinRemoving: needs.hairpin(needs.unneeded))
            } catch {
                throw .operational("nftables batch failed", cause: error)
            }
        }
        return change
    }

    public func reapply(network: NetworkDefinition, db: JournalDB, reason: String, context: KindContext) throws(VirtPortError) {
        try Forwarder(context: context).reapply(network: network, reason: reason, db: db)
    }

    public func heal(db: JournalDB, context: KindContext) throws(VirtPortError) -> [String] {
        let config = context.config
        let rows = try db.activeMappings()
        // Fail-closed: forwards another kind holds stay out (taken out when they are in).
        let held = try Self.held(rows, db: db)
        let heldElements = Set(held.flatMap(\.mapping.elements))
        var plan = ReconcilePlan()
        plan.target = Set(rows.filter(\.isInKernel).flatMap(\.mapping.elements)).subtracting(heldElements)
        let reconciler = Reconciler(resources: context.resources, running: [:], diagnostics: context.warnings.diagnostics)
        plan.planKernel(try reconciler.readKernel(), table: config.table, rows: rows, reason: "heal")
        let takeOut = plan.kernelDelete.intersection(heldElements)
        var healed: [String] = []
        let nf = try context.driver()
        do {
            if plan.rebuildTable {
                try nf.replaceAll(elements: Array(plan.target), hairpin: [],
                                  others: try Forwarder(context: context).othersInTable(db: db))
                healed.append("table inet \(config.table) rebuilt from the journal (\(plan.target.count) elements)")
            } else if !plan.kernelAdd.isEmpty || !takeOut.isEmpty {
                try nf.apply(adding: Array(plan.kernelAdd), removing: Array(takeOut))
                if !plan.kernelAdd.isEmpty { healed.append("\(plan.kernelAdd.count) map elements of table inet \(config.table) re-added") }
                if !takeOut.isEmpty { healed.append("\(takeOut.count) map elements of held forwards taken out of table inet \(config.table)") }
            }
        } catch {
            throw .operational("heal: nftables batch failed", cause: error)
        }
        try Self.reopen(held, db: db)
        healed += try NetworkSync(nf: nf, resolver: reconciler.files, warn: context.warnings.emit).sync(db: db, others: [])
        return healed
    }

    /// Fail-closed: the rows whose forward another kind holds (`Hold`), in any state.
    static func held(_ rows: [ActiveMapping], db: JournalDB) throws(VirtPortError) -> [ActiveMapping] {
        let holds = try db.holds(kind: name)
        if holds.isEmpty { return [] }
        let keys = Set(holds.map { $0.domain.uuid + "#" + $0.key })
        return rows.filter { keys.contains($0.domain.uuid + "#" + $0.mapping.hostKey) }
    }

    /// Held rows that were applied are not in the kernel any more: their intent is open again.
    static func reopen(_ held: [ActiveMapping], db: JournalDB) throws(VirtPortError) {
        let ids = held.filter { $0.state == .applied }.map(\.id)
        if !ids.isEmpty { _ = try db.setState(ids: ids, state: .adding) }
    }

    /// Held forwards whose hold the step dropped, put in the kernel by this kind's step (heal,
    /// network started; reconcile commits its own): their intents become applied, with history.
    public func released(_ holds: [Hold], db: JournalDB, reason: String, context: KindContext) throws(VirtPortError) {
        let keys = Set(holds.map { $0.domain.uuid + "#" + $0.key })
        let done = try db.activeMappings().filter {
            $0.state == .adding && !$0.mapping.isPending && keys.contains($0.domain.uuid + "#" + $0.mapping.hostKey)
        }
        for uuid in Set(done.map(\.domain.uuid)).sorted() {
            let mine = done.filter { $0.domain.uuid == uuid }
            try db.commitApply(domain: mine[0].domain, delta: ApplyDelta(adding: mine), reason: reason, now: nowMicros())
            for r in mine {
                context.log.notice("domain '\(Quoted.message(r.domain.name))' forward \(MappingText.describe(r.mapping)) applied: "
                    + "what held it is in place again (\(reason))")
            }
        }
    }

    public func reconcile(running: [String: RunningDomain], db: JournalDB?, reason: String,
                          context: KindContext) throws(VirtPortError) -> any KindReconcile {
        let reconciler = Reconciler(resources: context.resources, running: running, diagnostics: context.warnings.diagnostics)
        return ForwardReconcile(plan: try reconciler.plan(db: db, reason: reason), reconciler: reconciler, reason: reason)
    }

    public func removeEverything(db: JournalDB?, reason: String, context: KindContext) throws(VirtPortError) -> Int {
        try Forwarder(context: context).removeEverything(reason: reason, db: db)
    }

    public func removedLine(count: Int, config: Config) -> String {
        "removed: \(count) active forward(s), table inet \(config.table) and libvirt accept rules"
    }
}

/// Reconcile's forwards part: `ReconcilePlan` (pure) and `Reconciler.apply`.
struct ForwardReconcile: KindReconcile {
    let plan: ReconcilePlan
    let reconciler: Reconciler
    let reason: String
    var fixes: [Fix] { plan.fixes }
    func apply(db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) -> [Fix] {
        try reconciler.apply(plan, db: db, reason: reason)
    }
}

/// One domain's forwards change after its intents are written.
final class ForwardChange: StagedChange {
    let forwarder: Forwarder
    let domain: DomainRef
    let reason: String
    /// A start's delta (commitApply), or a stop's rows (commitRemove).
    let delta: ApplyDelta?
    let removed: [ActiveMapping]?
    /// What the kernel needs: nil when nothing (only pending forwards).
    var kernel: (adding: [ForwardElement], removing: [ForwardElement], needs: NetworkNeeds)?
    var batchPart: (any BatchPart)?
    /// Fail-closed: the host keys (`Mapping.hostKey`) of this domain's forwards an earlier kind
    /// of the change holds (`hold`): kept out of the kernel, their intents left open.
    var heldKeys: Set<String> = []

    init(forwarder: Forwarder, domain: DomainRef, reason: String, delta: ApplyDelta?, removed: [ActiveMapping]?) {
        self.forwarder = forwarder
        self.domain = domain
        self.reason = reason
        self.delta = delta
        self.removed = removed
    }

    var touchesKernel: Bool { kernel != nil }

    func hold(_ holds: [Hold]) {
        for h in holds where h.kind == ForwardKind.name && h.domain.uuid == domain.uuid { heldKeys.insert(h.key) }
    }

    /// The kept rows (a start's) whose forward is held.
    var heldRows: [ActiveMapping] {
        guard let delta, !heldKeys.isEmpty else { return [] }
        return (delta.adding + delta.unchanged).filter { heldKeys.contains($0.mapping.hostKey) }
    }

    func afterBatch(sent: Bool, db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) {
        guard let (adding, removing, needs) = kernel else { return }
        let held = heldKeys.isEmpty ? [] : Set(heldRows.flatMap(\.mapping.elements))
        if held.isEmpty {
            try forwarder.program(db: db, lock: lock, adding: adding, removing: removing, networks: needs, sent: sent,
                                  domainUUID: domain.uuid)
            return
        }
        // Fail-closed: the held forwards' elements stay out, and go if they were in (a list
        // changed, an element the shared batch put in).
        try forwarder.program(db: db, lock: lock, adding: adding.filter { !held.contains($0) },
                              removing: removing + Array(held), networks: needs, sent: false, held: held,
                              domainUUID: domain.uuid)
    }

    func withdraw(db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) {
        let inKernel = heldRows.filter { $0.state == .applied }
        if inKernel.isEmpty { return }
        let elements = inKernel.flatMap(\.mapping.elements)
        do { try context.driver().apply(adding: [], removing: elements) } catch {
            throw .operational("nftables batch failed", cause: error)
        }
        try forwarder.forgetFlows(context.driver(), elements, walk: false)
        _ = try db.setState(ids: inKernel.map(\.id), state: .adding)
    }

    func commit(db: JournalDB) throws(VirtPortError) {
        if var delta {
            if heldKeys.isEmpty {
                try db.commitApply(domain: domain, delta: delta, reason: reason, now: nowMicros())
            } else {
                let held = heldRows
                delta.adding.removeAll { heldKeys.contains($0.mapping.hostKey) }
                try db.commitApply(domain: domain, delta: delta, reason: reason, now: nowMicros())
                // Held rows that were applied are not any more: their intent is open again.
                let wereApplied = held.filter { $0.state == .applied }.map(\.id)
                if !wereApplied.isEmpty { _ = try db.setState(ids: wereApplied, state: .adding) }
            }
        }
        if let removed { try db.commitRemove(removed, reason: reason, now: nowMicros()) }
    }

    func finish(db: JournalDB, context: KindContext) {
        if let delta {
            let adding = heldKeys.isEmpty ? delta.adding : delta.adding.filter { !heldKeys.contains($0.mapping.hostKey) }
            forwarder.log.change(domain: domain, adding: adding, removing: delta.removing, reason: reason)
            forwarder.forgetUnforwardedFlows(db: db, adding: adding.map(\.mapping))
        }
        if let removed { forwarder.log.change(domain: domain, adding: [], removing: removed, reason: reason) }
    }
}
