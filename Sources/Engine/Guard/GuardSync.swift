#if canImport(Glibc)
import Glibc
#endif
import Journal
import Netfilter
public import VirtPortCore

/// Bridge port guards: the plan's `guards` → journal rows → one batch to `table bridge <table>` →
/// the ports' isolated flags → rows applied. Under the same `ChangeLock` as the forwards, so a
/// rebuild from the journal never misses a hook's change in flight. Called from
/// `DomainSync.apply`/`remove` (hooks and the agent), network `started` and reconcile.
public enum GuardSync {
    /// Makes the journal, the bridge table and the isolated flags hold exactly `plan.guards` of a
    /// running domain (those that name a tap). Idempotent: a repeat re-adds the elements, which
    /// heals deleted ones, and rebuilds the table when its chains were damaged. A lease that moved
    /// changes the port's address elements in the same single batch.
    static func apply(_ plan: Plan, reason: String, resources: Resources, diagnostics: any Diagnostics) throws(VirtPortError) {
        let domain = DomainRef(name: plan.domainName, uuid: plan.domainUUID)
        let guards = plan.guards.filter { $0.tap != nil }
        if guards.isEmpty {
            // The common case (nothing guarded, nothing journaled): one read, no lock, no journal created.
            guard let db = try resources.existingJournal(readOnly: true), try !db.activeGuards(domainUUID: domain.uuid).isEmpty else {
                return
            }
        }
        let db = try resources.journal()
        let lock = try resources.changeLock()
        try lock.withShared { () throws(VirtPortError) in
            try applyLocked(domain, guards, reason: reason, db: db, resources: resources, lock: lock,
                            warnings: warnings(resources, diagnostics))
        }
    }

    /// Takes down the domain's guards from the journal (qemu `stopped`: the XML names no tap). A tap
    /// that is already gone is no error: its elements are keyed by name and go all the same, and
    /// there is no isolated flag left to clear.
    static func remove(uuid: String, reason: String, resources: Resources, diagnostics: any Diagnostics) throws(VirtPortError) {
        guard let db = try resources.existingJournal(readOnly: false), try !db.activeGuards(domainUUID: uuid).isEmpty else {
            return
        }
        let lock = try resources.changeLock()
        try lock.withShared { () throws(VirtPortError) in
            try removeLocked(uuid: uuid, reason: reason, db: db, resources: resources, lock: lock,
                             warnings: warnings(resources, diagnostics))
        }
    }

    /// Takes down every guard (`virtport uninstall`, package removal): `table bridge` is deleted
    /// (whether or not the journal knows of anything in it), the isolated flags virtport set are
    /// cleared (never libvirt's own), and every guard row is closed with an `off` event.
    /// - Returns: how many guarded ports were taken down.
    public static func removeEverything(reason: String, resources: Resources,
                                        diagnostics: any Diagnostics) throws(VirtPortError) -> Int {
        let warnings = warnings(resources, diagnostics)
        let deleteTable = { () throws(VirtPortError) in
            do { try resources.kernel().deleteGuardTable() } catch {
                throw .operational("cannot delete table bridge \(resources.config.table)", cause: error)
            }
        }
        guard let db = try resources.existingJournal(readOnly: false) else {
            try deleteTable()
            return 0
        }
        return try resources.changeLock().withExclusive { () throws(VirtPortError) -> Int in
            let rows = try db.activeGuards()
            for uuid in Set(rows.map(\.domain.uuid)) { try db.setGuardState(domainUUID: uuid, .removing) }
            try deleteTable()
            clearIsolation(rows, warnings: warnings)
            divertGroups(rows, on: false, warnings: warnings)
            let log = EventLog(config: resources.config)
            for uuid in Set(rows.map(\.domain.uuid)).sorted() {
                try db.deleteGuards(domainUUID: uuid, reason: reason, now: nowMicros())
            }
            for row in rows { log.info("guard off: domain '\(Quoted.message(row.domain.name))' port \(row.tap) (\(reason))") }
            return rows.count
        }
    }

    /// Network `started` (libvirt rebuilt its bridge and firewall, maybe after a firewall reload
    /// that flushed ours): rebuilds the bridge table from the journal when anything of it is
    /// missing (an intact table keeps its counters), and puts back the isolated flags virtport set
    /// on that network's ports (a tap re-enslaved to a new bridge has lost its flag).
    static func reapply(network: String, reason: String, resources: Resources, diagnostics: any Diagnostics) throws(VirtPortError) {
        guard let db = try resources.existingJournal(readOnly: false) else { return }
        try resources.changeLock().withExclusive { () throws(VirtPortError) in
            if let healed = try healLocked(db: db, resources: resources) {
                EventLog(config: resources.config).notice("healed: \(healed) (\(reason))")
            }
            for row in try db.activeGuards() where row.network == network && row.isolatedByUs && BridgePort.isolated(row.tap) == false {
                do throws(NetfilterError) { try BridgePort.setIsolated(row.tap, true) } catch {
                    warnings(resources, diagnostics).emit("cannot set the isolated flag of bridge port \(row.tap) again: \(error)")
                }
            }
            divertGroups(try db.activeGuards().filter { $0.network == network }, on: true,
                         warnings: warnings(resources, diagnostics))
        }
    }

    /// Self-heal and reconcile (the caller holds the change lock exclusively): checks `table bridge`
    /// against the journal and rebuilds it in one batch when anything is missing.
    /// - Returns: one line about what it healed (the caller logs it), or nil when the table was
    ///   intact or nothing is guarded.
    static func healLocked(db: JournalDB, resources: Resources, dryRun: Bool = false) throws(VirtPortError) -> String? {
        let rows = try db.activeGuards()
        if rows.isEmpty { return nil }
        let nf = try resources.kernel()
        let damage: String?
        do { damage = try nf.guardTableDamage(expecting: rows.compactMap(port)) } catch {
            throw .operational("cannot read table bridge \(resources.config.table)", cause: error)
        }
        guard let damage else { return nil }
        if !dryRun { try rebuild(rows, resources: resources) }
        return "\(damage): rebuilt from the journal in one batch, \(rows.count) guarded ports"
    }

    /// Reconcile's part (lock held exclusively, unless `dryRun`: then nothing changes and the
    /// fixes say what would): guards of domains that are not running go; the table is healed;
    /// running domains get their planned guards.
    static func reconcile(running: [String: RunningDomain], resources: Resources, lock: ChangeLock?, reason: String,
                          dryRun: Bool = false, diagnostics: any Diagnostics) throws(VirtPortError) -> [Fix] {
        guard let db = try resources.existingJournal(readOnly: dryRun) else { return [] }
        let warn = warnings(resources, diagnostics)
        var fixes: [Fix] = []
        let files = LibvirtFiles(config: resources.config, overrides: [])
        for uuid in Set(try db.activeGuards().map(\.domain.uuid)).sorted() where running[uuid] == nil {
            let name = try db.activeGuards(domainUUID: uuid).first?.domain.name
            if let lock, !dryRun {
                try removeLocked(uuid: uuid, reason: reason, db: db, resources: resources, lock: lock, warnings: warn)
            }
            fixes.append(Fix(.removeMapping, domain: name, what: "port guards", reason: "domain is not running", guards: true))
        }
        // The table first, from the journal: what a flush took is reported as such, not hidden in
        // the per-domain pass below (whose batches would rebuild it silently).
        if let healed = try healLocked(db: db, resources: resources, dryRun: dryRun) {
            fixes.append(Fix(.rebuildTable, domain: nil, what: "table bridge \(resources.config.table)", reason: healed,
                             guards: true))
        }
        for (uuid, r) in running.sorted(by: { $0.key < $1.key }) {
            guard let domain = r.domain else { continue }
            let ref = DomainRef(name: domain.name, uuid: uuid)
            let before = try db.activeGuards(domainUUID: uuid)
            let guards: [GuardPlan]
            do { guards = try Planner.plan(domain: domain, resolver: files, policy: resources.config.policy).guards } catch {
                continue  // the forwards' part reports the invalid metadata
            }
            let want = guards.filter { $0.tap != nil }
            if want.isEmpty && before.isEmpty { continue }
            let planned = want.map { GuardRow(domain: ref, plan: $0, tap: $0.tap!, isolatedByUs: false, state: .applied) }
                .sorted { $0.tap < $1.tap }
            // Same rows, all applied, and no isolated flag of ours lost (a tap re-enslaved loses it).
            let agrees = before.count == planned.count
                && zip(before, planned).allSatisfy { $0.sameGuard($1) && $0.state == .applied }
                && before.allSatisfy { !$0.isolatedByUs || BridgePort.isolated($0.tap) != false }
                && before.allSatisfy { port($0) == nil || BridgePort.groupForwardMask($0.tap).map { $0 & BridgePort.guardedGroups == BridgePort.guardedGroups } != false }
            if agrees { continue }
            if let lock, !dryRun {
                try applyLocked(ref, want, reason: reason, db: db, resources: resources, lock: lock, warnings: warn)
            }
            fixes.append(Fix(.addMapping, domain: domain.name, what: "port guards (\(want.compactMap(\.tap).joined(separator: ", ")))",
                             reason: "journal did not match the running domain", guards: true))
        }
        return fixes
    }

    // MARK: - Under the lock

    static func applyLocked(_ domain: DomainRef, _ guards: [GuardPlan], reason: String, db: JournalDB,
                            resources: Resources, lock: ChangeLock, warnings: Warnings) throws(VirtPortError) {
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
            let byUs = g.isolated && ((old?.isolatedByUs ?? false) || BridgePort.isolated(tap) == false)
            rows.append(GuardRow(domain: domain, plan: g, tap: tap, isolatedByUs: byUs))
        }
        let gone = before.filter { old in !rows.contains { $0.tap == old.tap } }
        // A port that is no longer filtered (isolation only now) loses all its elements, not just
        // the stale ones.
        let adding = rows.compactMap(port)
        let previous = held.compactMap(port)
        try db.putGuards(domain: domain, rows, reason: reason, now: nowMicros())
        try program(adding: adding, previous: previous, removing: previous.filter { p in !adding.contains { $0.tap == p.tap } },
                    db: db, resources: resources, lock: lock)
        forgetFlows(of: Set(previous.flatMap(\.addresses)).subtracting(adding.flatMap(\.addresses)), resources: resources,
                    warnings: warnings)
        for row in rows {
            let wasOurs = held.first { $0.tap == row.tap }?.isolatedByUs ?? false
            do throws(NetfilterError) {
                if row.isolatedByUs && BridgePort.isolated(row.tap) != true {
                    try BridgePort.setIsolated(row.tap, true)
                } else if wasOurs && !row.isolatedByUs {
                    try BridgePort.setIsolated(row.tap, false)
                }
            } catch {
                throw .operational("cannot set the isolated flag of bridge port \(row.tap)", cause: error)
            }
        }
        clearIsolation(gone, warnings: warnings)
        divertGroups(rows, on: true, warnings: warnings)
        divertGroups(gone + held.filter { h in rows.contains { $0.tap == h.tap && port($0) == nil } }, on: false,
                     warnings: warnings)
        try db.setGuardState(domainUUID: domain.uuid, .applied)
        let log = EventLog(config: resources.config)
        for row in rows where !(before.contains { $0.sameGuard(row) }) {
            let verb = before.contains { $0.tap == row.tap } ? "guard changed" : "guard on"
            log.info("\(verb): domain '\(Quoted.message(domain.name))' port \(row.tap) (\(row.mac)) \(row.flags); "
                + "addresses: \(row.addresses.isEmpty ? (row.spoofing ? "none yet (DHCP and DAD only)" : "any") : row.addressText) (\(reason))")
        }
        for row in gone { log.info("guard off: domain '\(Quoted.message(domain.name))' port \(row.tap) (\(reason))") }
    }

    static func removeLocked(uuid: String, reason: String, db: JournalDB, resources: Resources, lock: ChangeLock,
                             warnings: Warnings) throws(VirtPortError) {
        let rows = try db.activeGuards(domainUUID: uuid)
        if rows.isEmpty { return }
        try db.setGuardState(domainUUID: uuid, .removing)
        try program(adding: [], previous: [], removing: rows.compactMap(port), db: db, resources: resources, lock: lock,
                    excluding: uuid)
        clearIsolation(rows, warnings: warnings)
        divertGroups(rows, on: false, warnings: warnings)
        try db.deleteGuards(domainUUID: uuid, reason: reason, now: nowMicros())
        let log = EventLog(config: resources.config)
        for row in rows { log.info("guard off: domain '\(Quoted.message(row.domain.name))' port \(row.tap) (\(reason))") }
    }

    /// An address a guard stopped allowing (a lease moved, `ip=` edited, the tap changed hands)
    /// keeps no connection tracking entry: its flows must not go on as if still allowed (README
    /// "Connection tracking"). Two filtered walks of the conntrack table per address; not on a
    /// stop (the port is gone with its traffic). A failure is a warning.
    static func forgetFlows(of addresses: Set<IPAddress>, resources: Resources, warnings: Warnings) {
        if addresses.isEmpty { return }
        do {
            let nf = try resources.kernel()
            for address in addresses.sorted() { try nf.forgetFlows(of: address) }
        } catch {
            warnings.emit("cannot delete the connection tracking entries of addresses a guard no longer allows: \(error)")
        }
    }

    /// Turns off the isolated flags virtport set on `rows`' ports; a port that is gone (the tap
    /// vanished, or left the bridge) has none to clear.
    static func clearIsolation(_ rows: [GuardRow], warnings: Warnings) {
        for row in rows where row.isolatedByUs {
            do throws(NetfilterError) { try BridgePort.setIsolated(row.tap, false) } catch {
                if ![ENODEV, EOPNOTSUPP, EINVAL].contains(error.errno) {
                    warnings.emit("cannot clear the isolated flag of bridge port \(row.tap): \(error)")
                }
            }
        }
    }

    /// Filtered ports (`port(row)` not nil) forward the reserved group addresses the bridge would
    /// otherwise hand to the host past every bridge hook (`BridgePort.guardedGroups`), so their
    /// frames meet the guard; `on: false` gives them back when the guard goes. A port that is gone
    /// has nothing to give back.
    static func divertGroups(_ rows: [GuardRow], on: Bool, warnings: Warnings) {
        for row in rows where port(row) != nil {
            do throws(NetfilterError) { try BridgePort.setGuardedGroups(row.tap, on) } catch {
                if on || ![ENODEV, EOPNOTSUPP, EINVAL].contains(error.errno) {
                    warnings.emit("cannot \(on ? "set" : "clear") the group_fwd_mask of bridge port \(row.tap): \(error)")
                }
            }
        }
    }

    /// One batch for the change; when the table (or an element a delete expected) is missing, or
    /// its chains were damaged, the whole table is rebuilt from the journal in one batch instead,
    /// with `lock` converted to exclusive.
    static func program(adding: [GuardPort], previous: [GuardPort], removing: [GuardPort], db: JournalDB,
                        resources: Resources, lock: ChangeLock, excluding uuid: String? = nil) throws(VirtPortError) {
        if adding.isEmpty && removing.isEmpty && previous.isEmpty { return }
        let nf = try resources.kernel()
        var damage: String?
        do throws(NetfilterError) {
            try nf.changeGuards(adding: adding, previous: previous, removing: removing)
            if !adding.isEmpty, try !nf.guardSkeletonIsIntact() { damage = "had chains or rules missing" }
        } catch where error.isMissingObject {
            damage = "was missing (or elements of it were)"
        } catch {
            throw .operational("nftables batch for table bridge \(resources.config.table) failed", cause: error)
        }
        if !removing.isEmpty { nf.closeInBackground() }
        guard let damage else { return }
        try lock.convertToExclusive()
        let rows = try db.activeGuards().filter { $0.domain.uuid != uuid }
        try rebuild(rows, resources: resources)
        // The first guard of the host creates the table: nothing was lost, nothing to say.
        let adding = Set(adding.map(\.tap))
        if previous.isEmpty && rows.allSatisfy({ adding.contains($0.tap) }) { return }
        EventLog(config: resources.config).notice("healed: table bridge \(resources.config.table) \(damage): "
            + "rebuilt from the journal in one batch, \(rows.count) guarded ports")
    }

    static func rebuild(_ rows: [GuardRow], resources: Resources) throws(VirtPortError) {
        do { try resources.kernel().replaceGuards(rows.compactMap(port)) } catch {
            throw .operational("cannot rebuild table bridge \(resources.config.table)", cause: error)
        }
    }

    /// The kernel's view of a row; nil when the guard needs no filtering (spoofing off, DHCP and
    /// RA allowed: isolation only).
    static func port(_ row: GuardRow) -> GuardPort? {
        if !row.spoofing && row.dhcpServer && row.routerAdvert { return nil }
        return GuardPort(tap: row.tap, mac: row.mac, addresses: row.addresses.map(\.address), spoofing: row.spoofing,
                         dhcpServer: row.dhcpServer, routerAdvert: row.routerAdvert)
    }

    static func warnings(_ resources: Resources, _ diagnostics: any Diagnostics) -> Warnings {
        Warnings(diagnostics: diagnostics, log: EventLog(config: resources.config))
    }
}
