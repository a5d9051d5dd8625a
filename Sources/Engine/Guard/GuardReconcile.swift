public import Journal
import Netfilter
public import VirtPortCore

/// A bridge port's flags as read back (nil: not a bridge port).
public struct PortFlags: Sendable, Equatable {
    public var isolated: Bool?
    public var groupForwardMask: UInt16?
    public init(isolated: Bool?, groupForwardMask: UInt16?) {
        self.isolated = isolated
        self.groupForwardMask = groupForwardMask
    }
}

/// Reconcile's guards part, decided with no I/O from what `GuardKind.reconcile` read: guards of
/// domains that are not running go; a damaged `table bridge` is rebuilt from the journal;
/// running domains get their planned guards (rows, flags) when the journal or a flag disagrees.
public struct GuardReconcilePlan: KindReconcile {
    /// Domains whose guards go (not running), by uuid.
    public var removals: [String] = []
    public var rebuild = false
    /// Domains that get their planned guards again.
    public var applies: [(domain: DomainRef, guards: [GuardPlan])] = []
    public var fixes: [Fix] = []
    public var reason = "reconcile"

    public init() {}

    /// - Parameters:
    ///   - rows: the journal's guard rows.
    ///   - running: the uuids of the running domains (one without usable XML keeps its guards).
    ///   - planned: per running domain (uuid) with usable XML and valid metadata, its guards that name a tap.
    ///   - damage: what is wrong with `table bridge` given the kept rows (nil: intact, or nothing kept).
    ///   - keptCount: how many rows belong to running domains.
    ///   - flags: the bridge port flags of the kept rows' taps.
    public static func make(rows: [GuardRow], running: Set<String>, planned: [String: (DomainRef, [GuardPlan])], damage: String?, keptCount: Int,
                            flags: [String: PortFlags], table: String, reason: String) -> GuardReconcilePlan {
        var p = GuardReconcilePlan()
        p.reason = reason
        for uuid in Set(rows.map(\.domain.uuid)).sorted() where !running.contains(uuid) {
            p.removals.append(uuid)
            p.fixes.append(Fix(.removeMapping, domain: rows.first { $0.domain.uuid == uuid }?.domain.name, what: "port guards",
                               reason: "domain is not running", guards: true,
                               explanation: "a VM that is not running still has its bridge port guard in the journal (domain is not running)"))
        }
        // The table first, from the journal: what a flush took is reported as such, not hidden in
        // the per-domain pass below (whose batches would rebuild it silently).
        if let damage {
            p.rebuild = true
            let reason = GuardKind.healedLine(damage, count: keptCount)
            p.fixes.append(Fix(.rebuildTable, domain: nil, what: "table bridge \(table)", reason: reason, guards: true,
                               explanation: notInPlace(reason)))
        }
        for (uuid, (ref, want)) in planned.sorted(by: { $0.key < $1.key }) {
            let before = rows.filter { $0.domain.uuid == uuid }.sorted { $0.tap < $1.tap }
            if want.isEmpty && before.isEmpty { continue }
            let planned = want.map { GuardRow(domain: ref, plan: $0, tap: $0.tap!, isolatedByUs: false, state: .applied) }
                .sorted { $0.tap < $1.tap }
            let guarded = BridgePort.guardedGroups
            // Same rows, all applied, and no isolated flag of ours lost (a tap re-enslaved loses it).
            let agrees = before.count == planned.count
                && zip(before, planned).allSatisfy { $0.sameGuard($1) && $0.state == .applied }
                && before.allSatisfy { !$0.isolatedByUs || flags[$0.tap]?.isolated != false }
                && before.allSatisfy { GuardKind.port($0) == nil
                    || flags[$0.tap]?.groupForwardMask.map { $0 & guarded == guarded } != false }
            if agrees { continue }
            p.applies.append((ref, want))
            p.fixes.append(Fix(.addMapping, domain: ref.name, what: "port guards (\(want.compactMap(\.tap).joined(separator: ", ")))",
                               reason: "journal did not match the running domain", guards: true,
                               explanation: notInPlace("journal did not match the running domain")))
        }
        return p
    }

    /// doctor's sentence for a guard that is not as declared.
    static func notInPlace(_ reason: String) -> String {
        "a bridge port guard is not in place as declared (\(reason)): frames from that VM's port are not checked"
    }

    public func apply(db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) -> [Fix] {
        for uuid in removals {
            if let change = try GuardKind.stageRemove(uuid: uuid, reason: reason, db: db, context: context) {
                try change.alone(db: db, lock: lock, context: context)
            }
        }
        if rebuild { try GuardKind.rebuild(try db.activeGuards(), context: context) }
        for (ref, guards) in applies {
            try GuardKind.stageApply(ref, guards, reason: reason, db: db, context: context).alone(db: db, lock: lock, context: context)
        }
        return fixes
    }
}

extension StagedChange {
    /// A change made on its own (reconcile, lock held): its own batch, its side effects, its commit.
    func alone(db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) {
        try afterBatch(sent: false, db: db, lock: lock, context: context)
        try commit(db: db)
        finish(db: db, context: context)
    }
}
