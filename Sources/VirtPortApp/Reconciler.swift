import Journal
import Netfilter
import VirtPortCore

/// `virtport reconcile`: makes the journal, the kernel (read back over netlink) and the running
/// domains agree, and says what it fixed. Idempotent: a second run finds nothing to do.
///
/// Running domains with metadata get exactly their planned mappings (half-done intents finished);
/// mappings of domains that are not running are removed; kernel elements nobody owns are deleted;
/// missing ones are re-added; a damaged or missing table is rebuilt in one batch.
struct Reconciler {
    let config: Config

    struct Fix: Sendable {
        var action: String  // add-mapping, remove-mapping, kernel-add, kernel-delete, rebuild-table, skip
        var domain: String?
        var what: String
        var reason: String
    }

    func run(dryRun: Bool, reason: String) throws(VirtPortError) -> [Fix] {
        var fixes: [Fix] = []
        // Alone against hooks mid-change from reading the journal to the last kernel batch.
        let lock = dryRun ? nil : try Forwarder(config: config).changeLock()
        try lock?.exclusive()
        let db = try openJournal(dryRun: dryRun, fixes: &fixes)
        let (running, _) = RunningDomains.list(config: config)
        let rows = try db?.activeMappings() ?? []
        let resolver = LibvirtFiles(config: config, overrides: [])

        // 1. What each domain should have.
        var domains: [String: DomainRef] = [:]
        for r in rows { domains[r.domain.uuid] = r.domain }
        for (uuid, e) in running where e.domain?.metadata != nil { domains[uuid] = DomainRef(name: e.name, uuid: uuid) }
        var desired: [String: [Mapping]] = [:]  // absent: leave the domain's rows alone
        for (uuid, ref) in domains {
            guard let e = running[uuid] else { desired[uuid] = []; continue }
            guard let d = e.domain else {
                fixes.append(Fix(action: "skip", domain: ref.name, what: "live XML unreadable", reason: e.problem ?? "?"))
                continue
            }
            do {
                desired[uuid] = d.metadata == nil ? [] : try Planner.plan(domain: d, resolver: resolver, policy: config.policy).mappings
            } catch {
                fixes.append(Fix(action: "skip", domain: ref.name, what: "metadata invalid, mappings left as they are", reason: error.message))
            }
        }

        // 2. Journal intents (what the kernel must end up holding).
        var applies: [(DomainRef, ApplyDelta)] = []
        var removals: [[ActiveMapping]] = []
        let why = { (uuid: String) in running[uuid] == nil ? "\(reason): domain not running" : "\(reason): domain running" }
        for (uuid, ref) in domains.sorted(by: { $0.value.name < $1.value.name }) {
            guard let want = desired[uuid] else { continue }
            let have = rows.filter { $0.domain.uuid == uuid }
            let haveSet = Set(have.filter { $0.state != .removing }.map(\.mapping))
            for m in want where !haveSet.contains(m) || have.contains(where: { $0.mapping == m && $0.state == .adding }) {
                fixes.append(Fix(action: "add-mapping", domain: ref.name, what: describe(m), reason: why(uuid)))
            }
            for r in have where !want.contains(r.mapping) {
                fixes.append(Fix(action: "remove-mapping", domain: ref.name, what: describe(r.mapping), reason: why(uuid)))
            }
            if dryRun || db == nil { continue }
            do {
                if want.isEmpty {
                    removals.append(try db!.beginRemoveAll(domainUUID: uuid, reason: why(uuid), now: nowMicros()))
                } else {
                    applies.append((ref, try db!.beginApply(domain: ref, desired: want, reason: why(uuid), now: nowMicros())))
                }
            } catch {
                fixes.append(Fix(action: "skip", domain: ref.name, what: "journal refused the mappings", reason: error.message))
            }
        }

        // 3. Kernel: one batch to the target set.
        var target = Set<ForwardElement>()
        if dryRun || db == nil {
            for (uuid, _) in domains {
                let ms = desired[uuid] ?? rows.filter { $0.domain.uuid == uuid && $0.state != .removing }.map(\.mapping)
                for m in ms { target.formUnion(m.elements) }
            }
        } else {
            for r in try db!.activeMappings() where r.state == .adding || r.state == .applied { target.formUnion(r.mapping.elements) }
        }
        let nf: NetfilterSession
        do { nf = try NetfilterSession(table: config.table) } catch {
            throw .operational("cannot open netlink socket", cause: "\(error)")
        }
        var current = Set<ForwardElement>()
        var rebuild = false
        do {
            current = Set(try nf.listElements())
            if !target.isEmpty, try !nf.skeletonIsIntact() {
                rebuild = true
                fixes.append(Fix(action: "rebuild-table", domain: nil, what: "table inet \(config.table)",
                                 reason: "\(reason): chains or rules missing"))
            }
        } catch {
            if !error.isMissingTable || !target.isEmpty {
                rebuild = !target.isEmpty
                if rebuild { fixes.append(Fix(action: "rebuild-table", domain: nil, what: "table inet \(config.table)", reason: "\(error)")) }
            }
        }
        let add = target.subtracting(current), del = current.subtracting(target)
        var owners: [ForwardElement: String] = [:]
        if !add.isEmpty || !del.isEmpty {
            for r in rows { for e in r.mapping.elements { owners[e] = r.domain.name } }
        }
        if !rebuild {
            for e in add.sorted(by: { $0.description < $1.description }) {
                fixes.append(Fix(action: "kernel-add", domain: owners[e], what: e.description, reason: "\(reason): missing from the kernel"))
            }
            for e in del.sorted(by: { $0.description < $1.description }) {
                fixes.append(Fix(action: "kernel-delete", domain: owners[e], what: e.description, reason: "\(reason): no mapping owns it"))
            }
        }
        if !dryRun {
            do {
                if rebuild {
                    try nf.replaceAll(elements: Array(target), hairpin: [])
                } else if !add.isEmpty || !del.isEmpty {
                    try nf.apply(adding: Array(add), removing: Array(del))
                }
            } catch {
                throw .operational("reconcile: nftables batch failed", cause: "\(error)")
            }
            // 4. Confirm the intents; hairpin subnets and libvirt's accept rules follow.
            if let db {
                for (ref, delta) in applies {
                    try db.commitApply(domain: ref, delta: delta, reason: "\(reason): domain running", now: nowMicros())
                }
                for rows in removals { try db.commitRemove(rows, reason: "\(reason): domain not running", now: nowMicros()) }
                try Forwarder(config: config).syncNetworks(db: db, nf: nf, others: Set(rows.compactMap(\.mapping.network)))
                if config.historyRetentionDays > 0 {
                    _ = try db.pruneHistory(olderThan: nowMicros() - Int64(config.historyRetentionDays) * 86_400_000_000)
                }
            }
        }
        return fixes
    }

    /// Opens (or, when missing or corrupt, rebuilds) the journal. Dry runs never create one.
    func openJournal(dryRun: Bool, fixes: inout [Fix]) throws(VirtPortError) -> JournalDB? {
        let path = config.databasePath
        if !JournalDB.exists(path: path) {
            if dryRun { return nil }
            fixes.append(Fix(action: "rebuild-journal", domain: nil, what: path, reason: "database missing: rebuilt from running domains"))
            return try JournalDB(path: path)
        }
        do {
            let db = try JournalDB(path: path, readOnly: dryRun)
            try db.quickCheck()
            return db
        } catch {
            guard JournalDB.isCorrupt(error), !dryRun else { throw error }
            let aside = try JournalDB.moveAside(path: path)
            Output.err("\(error.message): moved aside to \(aside); rebuilding from running domains")
            fixes.append(Fix(action: "rebuild-journal", domain: nil, what: path, reason: "corrupt database moved to \(aside)"))
            return try JournalDB(path: path)
        }
    }

    func describe(_ m: Mapping) -> String { "\(m.proto.rawValue) \(Listing.hostText(m)) -> \(Listing.guestText(m))" }
}
