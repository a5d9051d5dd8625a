#if canImport(Glibc)
import Glibc
#endif
public import Journal
import Netfilter
public import VirtPortCore

/// Bridge port guards as a rule kind: the plan's `guards` → journal rows → their share of the
/// domain's one batch (`table bridge <table>`) → the ports' isolated flags and group_fwd_mask →
/// rows applied. Under the same `ChangeLock` as every kind, so a rebuild from the journal never
/// misses a hook's change in flight. Every bridge port flag goes through the `FirewallDriver`.
public struct GuardKind: RuleKind {
    public static let name = "guards"
    public var name: String { Self.name }
    public init() {}

    public func tables(_ config: Config) -> [String] { ["bridge \(config.table)"] }
    public func tableOwners(base: String) -> [(family: String, table: String, owner: String)] { [("bridge", base, "virtport's guard")] }

    /// The common case (nothing guarded, nothing journaled) costs one read, no lock, no journal
    /// created.
    public func needsChange(_ plan: Plan?, uuid: String, context: KindContext) throws(VirtPortError) -> Bool {
        if let plan, plan.guards.contains(where: { $0.tap != nil }) { return true }
        guard let db = try context.resources.existingJournal(readOnly: plan != nil) else { return false }
        return try !db.activeGuards(domainUUID: uuid).isEmpty
    }

    public func stage(_ plan: Plan?, domain: DomainRef, reason: String, db: JournalDB,
                      context: KindContext) throws(VirtPortError) -> (any StagedChange)? {
        if let plan {
            return try Self.stageApply(domain, plan.guards.filter { $0.tap != nil }, reason: reason, db: db, context: context)
        }
        return try Self.stageRemove(uuid: domain.uuid, reason: reason, db: db, context: context)
    }

    /// Network `started` (libvirt rebuilt its bridge and firewall, maybe after a firewall reload
    /// that flushed ours): rebuilds the bridge table from the journal when anything of it is
    /// missing (an intact table keeps its counters), and puts back the isolated flags virtport set
    /// on that network's ports (a tap re-enslaved to a new bridge has lost its flag).
    public func reapply(network: NetworkDefinition, db: JournalDB, reason: String, context: KindContext) throws(VirtPortError) {
        if let healed = try Self.healLocked(db: db, context: context) {
            context.log.notice("healed: \(healed) (\(reason))")
        }
        let nf = try context.driver()
        for row in try db.activeGuards() where row.network == network.name && row.isolatedByUs && nf.isolated(row.tap) == false {
            do throws(NetfilterError) { try nf.setIsolated(row.tap, true) } catch {
                context.warnings.emit("cannot set the isolated flag of bridge port \(row.tap) again: \(error)")
            }
        }
        Self.divertGroups(try db.activeGuards().filter { $0.network == network.name }, on: true, context: context)
    }

    public func heal(db: JournalDB, context: KindContext) throws(VirtPortError) -> [String] {
        try Self.healLocked(db: db, context: context).map { [$0] } ?? []
    }

    /// Reads the journal's guards, the running domains' planned guards, `table bridge`'s damage
    /// and the ports' flags; `GuardReconcilePlan.make` decides with no I/O.
    public func reconcile(running: [String: RunningDomain], db: JournalDB?, reason: String,
                          context: KindContext) throws(VirtPortError) -> any KindReconcile {
        guard let db else { return GuardReconcilePlan() }
        let rows = try db.activeGuards()
        var planned: [String: (DomainRef, [GuardPlan])] = [:]
        for (uuid, r) in running {
            guard let domain = r.domain else { continue }
            // Invalid metadata: the forwards' part reports it.
            guard let guards = try? Planner.plan(domain: domain, resolver: context.files, policy: context.config.policy).guards
            else { continue }
            planned[uuid] = (DomainRef(name: domain.name, uuid: uuid), guards.filter { $0.tap != nil })
        }
        let kept = rows.filter { running[$0.domain.uuid] != nil }
        var damage: String?
        let nf = try context.driver()
        if !kept.isEmpty {
            do { damage = try nf.guardTableDamage(expecting: kept.compactMap(Self.port)) } catch {
                throw .operational("cannot read table bridge \(context.config.table)", cause: error)
            }
        }
        var flags: [String: PortFlags] = [:]
        for row in kept { flags[row.tap] = PortFlags(isolated: nf.isolated(row.tap), groupForwardMask: nf.groupForwardMask(row.tap)) }
        return GuardReconcilePlan.make(rows: rows, running: Set(running.keys), planned: planned, damage: damage, keptCount: kept.count, flags: flags,
                                       table: context.config.table, reason: reason)
    }

    /// `virtport uninstall`: `table bridge` is deleted (whether or not the journal knows of
    /// anything in it), the isolated flags virtport set are cleared (never libvirt's own), and
    /// every guard row is closed with an `off` event.
    public func removeEverything(db: JournalDB?, reason: String, context: KindContext) throws(VirtPortError) -> Int {
        let deleteTable = { () throws(VirtPortError) in
            do { try context.driver().deleteGuardTable() } catch {
                throw .operational("cannot delete table bridge \(context.config.table)", cause: error)
            }
        }
        guard let db else {
            try deleteTable()
            return 0
        }
        let rows = try db.activeGuards()
        for uuid in Set(rows.map(\.domain.uuid)) { try db.setGuardState(domainUUID: uuid, .removing) }
        try deleteTable()
        Self.clearIsolation(rows, context: context)
        Self.divertGroups(rows, on: false, context: context)
        for uuid in Set(rows.map(\.domain.uuid)).sorted() {
            try db.deleteGuards(domainUUID: uuid, reason: reason, now: nowMicros())
        }
        for row in rows { context.log.info("guard off: domain '\(Quoted.message(row.domain.name))' port \(row.tap) (\(reason))") }
        return rows.count
    }

    public func removedLine(count: Int, config: Config) -> String {
        "removed: \(count) guarded port(s), table bridge \(config.table) and the isolated flags virtport set"
    }

    // MARK: - Under the lock

    /// Self-heal and reconcile (the caller holds the change lock exclusively): checks `table bridge`
    /// against the journal and rebuilds it in one batch when anything is missing.
    /// - Returns: one line about what it healed (the caller logs it), or nil when the table was
    ///   intact or nothing is guarded.
    static func healLocked(db: JournalDB, context: KindContext) throws(VirtPortError) -> String? {
        let rows = try db.activeGuards()
        if rows.isEmpty { return nil }
        let damage: String?
        do { damage = try context.driver().guardTableDamage(expecting: rows.compactMap(port)) } catch {
            throw .operational("cannot read table bridge \(context.config.table)", cause: error)
        }
        guard let damage else { return nil }
        try rebuild(rows, context: context)
        return healedLine(damage, count: rows.count)
    }

    static func healedLine(_ damage: String, count: Int) -> String {
        "\(damage): rebuilt from the journal in one batch, \(count) guarded ports"
    }

    /// Writes the domain's guard rows (state `adding`) and returns what is left to do.
    static func stageApply(_ domain: DomainRef, _ guards: [GuardPlan], reason: String, db: JournalDB,
                           context: KindContext) throws(VirtPortError) -> GuardChange {
        let nf = try context.driver()
        let before = try db.activeGuards(domainUUID: domain.uuid)
        // A tap the journal still has for another domain (it stopped without a hook) carries that
        // domain's MAC, addresses and isolated flag: they must not stay for this one, so they
        // count as this domain's previous state of the port.
        let taken = try db.guardsHeldByOthers(taps: guards.compactMap(\.tap), except: domain.uuid)
        let held = before + taken
        var rows: [GuardRow] = []
        for g in guards {
            guard let tap = g.tap else { continue }
            let old = held.first { $0.tap == tap }
            // Ours when we set it before, or when it is off now and the guard wants it: never
            // libvirt's own <port isolated='yes'/> (already on before us).
            let byUs = g.isolated && ((old?.isolatedByUs ?? false) || nf.isolated(tap) == false)
            rows.append(GuardRow(domain: domain, plan: g, tap: tap, isolatedByUs: byUs))
        }
        try db.putGuards(domain: domain, rows, reason: reason, now: nowMicros())
        let change = GuardChange(domain: domain, reason: reason, before: before, held: held, rows: rows, removal: false)
        change.makePart(nf)
        return change
    }

    /// Marks the domain's rows `removing`; nil when it has none.
    static func stageRemove(uuid: String, reason: String, db: JournalDB, context: KindContext) throws(VirtPortError) -> GuardChange? {
        let rows = try db.activeGuards(domainUUID: uuid)
        guard let first = rows.first else { return nil }
        try db.setGuardState(domainUUID: uuid, .removing)
        let change = GuardChange(domain: first.domain, reason: reason, before: rows, held: [], rows: [], removal: true)
        change.makePart(try context.driver())
        return change
    }

    /// An address a guard stopped allowing (a lease moved, `ip=` edited, the tap changed hands)
    /// keeps no connection tracking entry: its flows must not go on as if still allowed (README
    /// "Connection tracking"). Two filtered walks of the conntrack table per address; not on a
    /// stop (the port is gone with its traffic). A failure is a warning.
    static func forgetFlows(of addresses: Set<IPAddress>, context: KindContext) {
        if addresses.isEmpty { return }
        do {
            let nf = try context.driver()
            for address in addresses.sorted() { try nf.forgetFlows(of: address) }
        } catch {
            context.warnings.emit("cannot delete the connection tracking entries of addresses a guard no longer allows: \(error)")
        }
    }

    /// Turns off the isolated flags virtport set on `rows`' ports; a port that is gone (the tap
    /// vanished, or left the bridge) has none to clear.
    static func clearIsolation(_ rows: [GuardRow], context: KindContext) {
        guard let nf = try? context.driver() else { return }
        for row in rows where row.isolatedByUs {
            do throws(NetfilterError) { try nf.setIsolated(row.tap, false) } catch {
                if ![ENODEV, EOPNOTSUPP, EINVAL].contains(error.errno) {
                    context.warnings.emit("cannot clear the isolated flag of bridge port \(row.tap): \(error)")
                }
            }
        }
    }

    /// Filtered ports (`port(row)` not nil) forward the reserved group addresses the bridge would
    /// otherwise hand to the host past every bridge hook (`BridgePort.guardedGroups`), so their
    /// frames meet the guard; `on: false` gives them back when the guard goes. A port that is gone
    /// has nothing to give back.
    static func divertGroups(_ rows: [GuardRow], on: Bool, context: KindContext) {
        guard let nf = try? context.driver() else { return }
        for row in rows where port(row) != nil {
            do throws(NetfilterError) { try nf.setGuardedGroups(row.tap, on) } catch {
                if on || ![ENODEV, EOPNOTSUPP, EINVAL].contains(error.errno) {
                    context.warnings.emit("cannot \(on ? "set" : "clear") the group_fwd_mask of bridge port \(row.tap): \(error)")
                }
            }
        }
    }

    /// The change's batch unless it already went in with a shared one (`sent`); when the table
    /// (or an element a delete expected) is missing, or its chains were damaged, the whole table
    /// is rebuilt from the journal in one batch instead, with `lock` converted to exclusive.
    static func program(adding: [GuardPort], previous: [GuardPort], removing: [GuardPort], db: JournalDB,
                        lock: ChangeLock, context: KindContext, excluding uuid: String? = nil,
                        sent: Bool = false) throws(VirtPortError) {
        if adding.isEmpty && removing.isEmpty && previous.isEmpty { return }
        let nf = try context.driver()
        var damage: String?
        do throws(NetfilterError) {
            if !sent { try nf.changeGuards(adding: adding, previous: previous, removing: removing) }
            if !adding.isEmpty, try !nf.guardSkeletonIsIntact() { damage = "had chains or rules missing" }
        } catch where error.isMissingObject {
            damage = "was missing (or elements of it were)"
        } catch {
            throw .operational("nftables batch for table bridge \(context.config.table) failed", cause: error)
        }
        if !removing.isEmpty { nf.closeInBackground() }
        guard let damage else { return }
        try lock.convertToExclusive()
        let rows = try db.activeGuards().filter { $0.domain.uuid != uuid }
        try rebuild(rows, context: context)
        // The first guard of the host creates the table: nothing was lost, nothing to say.
        let adding = Set(adding.map(\.tap))
        if previous.isEmpty && rows.allSatisfy({ adding.contains($0.tap) }) { return }
        context.log.notice("healed: table bridge \(context.config.table) \(healedLine(damage, count: rows.count))")
    }

    static func rebuild(_ rows: [GuardRow], context: KindContext) throws(VirtPortError) {
        do { try context.driver().replaceGuards(rows.compactMap(port)) } catch {
            throw .operational("cannot rebuild table bridge \(context.config.table)", cause: error)
        }
    }

    /// The kernel's view of a row; nil when the guard needs no filtering (spoofing off, DHCP and
    /// RA allowed: isolation only).
    static func port(_ row: GuardRow) -> GuardPort? {
        if !row.spoofing && row.dhcpServer && row.routerAdvert { return nil }
        return GuardPort(tap: row.tap, mac: row.mac, addresses: row.addresses.map(\.address), spoofing: row.spoofing,
                         dhcpServer: row.dhcpServer, routerAdvert: row.routerAdvert)
    }
}

/// One domain's guards change after its rows are written.
final class GuardChange: StagedChange {
    let domain: DomainRef
    let reason: String
    /// The domain's rows before (a stop: the rows that go).
    let before: [GuardRow]
    /// `before` plus the rows other domains held on the same taps.
    let held: [GuardRow]
    /// The rows now (a stop: none).
    let rows: [GuardRow]
    let removal: Bool
    var batchPart: (any BatchPart)?

    init(domain: DomainRef, reason: String, before: [GuardRow], held: [GuardRow], rows: [GuardRow], removal: Bool) {
        self.domain = domain
        self.reason = reason
        self.before = before
        self.held = held
        self.rows = rows
        self.removal = removal
    }

    /// Ports that get elements now (a port no longer filtered, isolation only now, loses all its
    /// elements, not just the stale ones), their previous versions, and the ports that go.
    var adding: [GuardPort] { rows.compactMap(GuardKind.port) }
    var previous: [GuardPort] { held.compactMap(GuardKind.port) }
    var removing: [GuardPort] {
        if removal { return before.compactMap(GuardKind.port) }
        let adding = adding
        return previous.filter { p in !adding.contains { $0.tap == p.tap } }
    }
    /// Rows of the domain that go (a start: taps it no longer has).
    var gone: [GuardRow] { removal ? before : before.filter { old in !rows.contains { $0.tap == old.tap } } }

    var touchesKernel: Bool { !(adding.isEmpty && removing.isEmpty && previous.isEmpty) }

    /// The shared batch's part; none when its reads fail (the change's own batch in `afterBatch`
    /// then meets the same trouble and handles it: a missing table is rebuilt).
    func makePart(_ nf: any FirewallDriver) {
        if !touchesKernel { return }
        batchPart = try? nf.guardPart(adding: removal ? [] : adding, previous: removal ? [] : previous, removing: removing)
    }

    func afterBatch(sent: Bool, db: JournalDB, lock: ChangeLock, context: KindContext) throws(VirtPortError) {
        if removal {
            try GuardKind.program(adding: [], previous: [], removing: removing, db: db, lock: lock, context: context,
                                  excluding: domain.uuid, sent: sent)
            GuardKind.clearIsolation(before, context: context)
            GuardKind.divertGroups(before, on: false, context: context)
            return
        }
        let adding = adding
        let previous = previous
        try GuardKind.program(adding: adding, previous: previous, removing: removing, db: db, lock: lock, context: context,
                              sent: sent)
        GuardKind.forgetFlows(of: Set(previous.flatMap(\.addresses)).subtracting(adding.flatMap(\.addresses)), context: context)
        let nf = try context.driver()
        for row in rows {
            let wasOurs = held.first { $0.tap == row.tap }?.isolatedByUs ?? false
            do throws(NetfilterError) {
                if row.isolatedByUs && nf.isolated(row.tap) != true {
                    try nf.setIsolated(row.tap, true)
                } else if wasOurs && !row.isolatedByUs {
                    try nf.setIsolated(row.tap, false)
                }
            } catch {
                throw .operational("cannot set the isolated flag of bridge port \(row.tap)", cause: error)
            }
        }
        let gone = gone
        GuardKind.clearIsolation(gone, context: context)
        GuardKind.divertGroups(rows, on: true, context: context)
        GuardKind.divertGroups(gone + held.filter { h in rows.contains { $0.tap == h.tap && GuardKind.port($0) == nil } }, on: false,
                               context: context)
    }

    func commit(db: JournalDB) throws(VirtPortError) {
        if removal {
            try db.deleteGuards(domainUUID: domain.uuid, reason: reason, now: nowMicros())
        } else {
            try db.setGuardState(domainUUID: domain.uuid, .applied)
        }
    }

    func finish(db: JournalDB, context: KindContext) {
        if removal {
            for row in before { context.log.info("guard off: domain '\(Quoted.message(row.domain.name))' port \(row.tap) (\(reason))") }
            return
        }
        for row in rows where !(before.contains { $0.sameGuard(row) }) {
            let verb = before.contains { $0.tap == row.tap } ? "guard changed" : "guard on"
            context.log.info("\(verb): domain '\(Quoted.message(domain.name))' port \(row.tap) (\(row.mac)) \(row.flags); "
                + "addresses: \(row.addresses.isEmpty ? (row.spoofing ? "none yet (DHCP and DAD only)" : "any") : row.addressText) (\(reason))")
        }
        for row in gone { context.log.info("guard off: domain '\(Quoted.message(domain.name))' port \(row.tap) (\(reason))") }
    }
}
