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
        var plan = ReconcilePlan()
        plan.target = Set(rows.filter(\.isInKernel).flatMap(\.mapping.elements))
        let reconciler = Reconciler(resources: context.resources, running: [:], diagnostics: context.warnings.diagnostics)
        plan.planKernel(try reconciler.readKernel(), table: config.table, rows: rows, reason: "heal")
        var healed: [String] = []
        let nf = try context.driver()
        do {
            if plan.rebuildTable {
                try nf.replaceAll(elements: Array(plan.target), hairpin: [],
                                  others: try Forwarder(context: context).othersInTable(db: db))
                healed.append("table inet \(config.table) rebuilt from the journal (\(plan.target.count) elements)")
            } else if !plan.kernelAdd.isEmpty {
                try nf.apply(adding: Array(plan.kernelAdd), removing: [])
                healed.append("\(plan.kernelAdd.count) map elements of table inet \(config.table) re-added")
            }
        } catch {
            throw .operational("heal: nftables batch failed", cause: error)
        }
        healed += try NetworkSync(nf: nf, resolver: reconciler.files, warn: context.warnings.emit).sync(db: db, others: [])
        return healed
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

    init(forwarder: Forwarder, domain: DomainRef, reason: String, delta: ApplyDelta?, removed: [ActiveMapping]?) {
        self.forwarder = forwarder
        self.domain = domain
        self.reason = reason
        self.delta = delta
        self.removed = removed
    }

    var touchesKernel: Bool { kernel != nil }

    func afterBatch(sent: Bool, db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) {
        guard let (adding, removing, needs) = kernel else { return }
        try forwarder.program(db: db, lock: lock, adding: adding, removing: removing, networks: needs, sent: sent)
    }

    func commit(db: JournalDB) throws(VirtPortError) {
        if let delta { try db.commitApply(domain: domain, delta: delta, reason: reason, now: nowMicros()) }
        if let removed { try db.commitRemove(removed, reason: reason, now: nowMicros()) }
    }

    func finish(db: JournalDB, context: KindContext) {
        if let delta {
            forwarder.log.change(domain: domain, adding: delta.adding, removing: delta.removing, reason: reason)
            forwarder.forgetUnforwardedFlows(db: db, adding: delta.adding.map(\.mapping))
        }
        if let removed { forwarder.log.change(domain: domain, adding: [], removing: removed, reason: reason) }
    }
}
