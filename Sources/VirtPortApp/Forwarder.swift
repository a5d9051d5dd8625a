#if canImport(Glibc)
import Glibc
#endif
import Journal
import Netfilter
import VirtPortCore

/// The plan → journal intent → one netlink batch → mark applied protocol (README "Journal").
/// A crash between any two steps leaves `adding`/`removing` rows that `virtport reconcile` finishes.
struct Forwarder {
    let config: Config
    /// Test-only fault injection (README "Crash tests"): `VIRTPORT_FAULT=after-intent|after-kernel`
    /// makes the process die right there, as a crash would.
    let fault = IO.env("VIRTPORT_FAULT")
    /// The agent's open journal, lock file and netlink socket; nil: a hook process opens its own.
    var warm: Warm? = nil

    func resolver(networkFiles: [NetworkDefinition] = []) -> LibvirtFiles {
        LibvirtFiles(config: config, overrides: networkFiles)
    }

    func journal() throws(VirtPortError) -> JournalDB {
        if let warm { return warm.db }
        return try JournalDB(path: config.databasePath)
    }

    /// The lock that keeps journal-to-kernel rebuilds apart from hooks mid-change (`ChangeLock`).
    func changeLock() throws(VirtPortError) -> ChangeLock {
        if let warm { return warm.lock }
        return try ChangeLock(databasePath: config.databasePath)
    }

    func kernel() throws(VirtPortError) -> NetfilterSession {
        if let warm { return try warm.kernel() }
        return try Self.openSession(table: config.table)
    }

    static func openSession(table: String) throws(VirtPortError) -> NetfilterSession {
        do { return try NetfilterSession(table: table) } catch {
            throw .operational("cannot open netlink socket", cause: "\(error)")
        }
    }

    /// Read-only conflict check (qemu `prepare`): another running domain already holds a port.
    func checkConflicts(_ plan: Plan) throws(VirtPortError) {
        try HostSockets.checkNotBound(plan.mappings)
        if let warm {
            try warm.db.checkConflicts(domain: DomainRef(name: plan.domainName, uuid: plan.domainUUID), desired: plan.mappings)
            return
        }
        guard JournalDB.exists(path: config.databasePath) else { return }
        let db = try JournalDB(path: config.databasePath, readOnly: true)
        try db.checkConflicts(domain: DomainRef(name: plan.domainName, uuid: plan.domainUUID), desired: plan.mappings)
    }

    /// Installs `plan` (qemu `start`/`reconnect`): idempotent, so re-running it repairs flushed elements.
    func apply(_ plan: Plan, reason: String) throws(VirtPortError) {
        let domain = DomainRef(name: plan.domainName, uuid: plan.domainUUID)
        let db = try journal()
        let lock = try changeLock()
        try lock.shared()
        let delta = try db.beginApply(domain: domain, desired: plan.mappings, reason: reason, now: nowMicros())
        crashPoint("after-intent")
        // Unchanged rows are re-added too: cheap (no NLM_F_EXCL) and it heals a flushed table.
        let keep = (delta.adding + delta.unchanged).map(\.mapping)
        let gone = delta.removing.map(\.mapping)
        if keep.allSatisfy(\.isPending) && gone.allSatisfy(\.isPending) {
            // Nothing for the kernel (no forwards, or only pending ones): no table is created.
            try db.commitApply(domain: domain, delta: delta, reason: reason, now: nowMicros())
            return
        }
        let nets = try networkNeeds(db: db, keeping: keep, removing: delta.removing)
        try program(db: db, lock: lock, adding: keep.flatMap(\.elements), removing: gone.flatMap(\.elements),
                    networks: nets)
        crashPoint("after-kernel")
        try db.commitApply(domain: domain, delta: delta, reason: reason, now: nowMicros())
    }

    /// Removes every mapping of a domain (qemu `stopped`/`release`); a no-op when there is none.
    func remove(domainUUID: String, reason: String) throws(VirtPortError) {
        guard JournalDB.exists(path: config.databasePath) else { return }
        let db = try journal()
        let lock = try changeLock()
        try lock.shared()
        let rows = try db.beginRemoveAll(domainUUID: domainUUID, reason: reason, now: nowMicros())
        if rows.isEmpty { return }
        crashPoint("after-intent")
        let gone = rows.map(\.mapping)
        let nets = try networkNeeds(db: db, keeping: [], removing: rows)
        try program(db: db, lock: lock, adding: [], removing: gone.flatMap(\.elements), networks: nets)
        crashPoint("after-kernel")
        try db.commitRemove(rows, reason: reason, now: nowMicros())
    }

    /// Network `started`: libvirt has just rebuilt its own rules, often because the firewall was
    /// reloaded (which may have flushed ours too). Rebuilds virtport's table from the journal in one
    /// batch and puts libvirt's accept rule for this network back in front of libvirt's reject.
    /// Rare, so thoroughness beats the cost of a table replace here.
    func reapply(network: NetworkDefinition, reason: String) throws(VirtPortError) {
        guard JournalDB.exists(path: config.databasePath) else { return }
        let db = try journal()
        let lock = try changeLock()
        try lock.exclusive()
        let rows = try db.activeMappings().filter { $0.state == .applied || $0.state == .adding }
        if rows.isEmpty { return }
        let needs = networksOf(rows, overrides: [network])
        let nf = try kernel()
        do {
            try nf.replaceAll(elements: rows.flatMap(\.mapping.elements), hairpin: needs.hairpin(needs.families.keys))
        } catch {
            throw .operational("cannot rebuild table inet \(config.table)", cause: "\(error)")
        }
        if let families = needs.families[network.name] {
            try LibvirtFirewall(nf: nf).ensure(network, families: families)
        }
    }

    /// What the libvirt networks of a change need: hairpin subnets and libvirt's accept rule for the
    /// networks that still have forwards, their removal for networks that no longer do.
    struct NetworkNeeds {
        var definitions: [String: NetworkDefinition] = [:]
        /// Networks with forwards after this change, and the families they use.
        var families: [String: Set<Family>] = [:]
        /// Networks whose last forward this change removes.
        var unneeded: Set<String> = []

        func hairpin(_ names: some Sequence<String>) -> [Subnet] {
            names.flatMap { name in
                (definitions[name]?.ips ?? []).map { Subnet(address: $0.subnet.network, prefix: UInt8($0.subnet.prefix)) }
            }
        }
    }

    /// The networks that `rows` in the kernel (applied or being added, not pending) forward into,
    /// with their families and definitions.
    func networksOf(_ rows: [ActiveMapping], overrides: [NetworkDefinition] = []) -> NetworkNeeds {
        var needs = NetworkNeeds()
        for r in rows where (r.state == .applied || r.state == .adding) && !r.mapping.isPending {
            if let n = r.mapping.network, let f = r.mapping.family { needs.families[n, default: []].insert(f) }
        }
        let resolver = resolver(networkFiles: overrides)
        for name in needs.families.keys { needs.definitions[name] = resolver.network(name) }
        return needs
    }

    /// libvirt's accept rule in front of its reject for every network of `needs` that has forwards,
    /// removed from those it names as unneeded.
    func syncFirewall(_ needs: NetworkNeeds, nf: NetfilterSession) throws(VirtPortError) {
        let firewall = LibvirtFirewall(nf: nf)
        for (name, families) in needs.families.sorted(by: { $0.key < $1.key }) {
            if let def = needs.definitions[name] { try firewall.ensure(def, families: families) }
        }
        for name in needs.unneeded.sorted() {
            if let def = needs.definitions[name] { try firewall.remove(def) }
        }
    }

    func networkNeeds(db: JournalDB, keeping: [Mapping], removing: [ActiveMapping]) throws(VirtPortError) -> NetworkNeeds {
        var needs = NetworkNeeds()
        let resolver = resolver()
        for m in keeping where !m.isPending {
            guard let name = m.network, let family = m.family else { continue }
            needs.families[name, default: []].insert(family)
        }
        let ids = removing.map(\.id)
        for name in Set(removing.compactMap(\.mapping.network)).subtracting(needs.families.keys)
        where try !db.networkHasForwards(name, excluding: ids) {
            needs.unneeded.insert(name)
        }
        for name in Set(needs.families.keys).union(needs.unneeded) {
            if let def = resolver.network(name) { needs.definitions[name] = def }
        }
        return needs
    }

    /// One netlink batch for the elements and hairpin subnets, then libvirt's accept rule. If part of
    /// virtport's table is missing (someone deleted a map or chain), the table is rebuilt in one
    /// batch from the journal plus this change, under `lock` held exclusively (the caller holds it
    /// shared).
    func program(db: JournalDB, lock: ChangeLock, adding: [ForwardElement], removing: [ForwardElement],
                 networks: NetworkNeeds = NetworkNeeds()) throws(VirtPortError) {
        let nf = try kernel()
        let hairpinAdd = networks.hairpin(networks.families.keys)
        let hairpinDel = networks.hairpin(networks.unneeded)
        var rebuild = false
        var created = false
        do throws(NetfilterError) {
            created = try nf.apply(adding: adding, removing: removing, hairpinAdding: hairpinAdd,
                                   hairpinRemoving: hairpinDel)
            // One whose chains were flushed or deleted behind our back accepts elements but
            // forwards nothing: rebuild it.
            if !created && !adding.isEmpty { rebuild = try !nf.skeletonIsIntact() }
        } catch where error.isMissingObject {
            rebuild = true
        } catch {
            throw .operational("nftables batch failed", cause: "\(error)")
        }
        // A table this call created holds only this change: add the journal's other forwards.
        if created { rebuild = try db.hasAppliedMappings() }
        if rebuild {
            try lock.exclusive()
            let rows = try db.activeMappings()
            let others = networksOf(rows)
            var all = Set(rows.filter { $0.state == .applied || $0.state == .adding }.flatMap(\.mapping.elements))
            all.subtract(removing)
            all.formUnion(adding)
            var hairpin = Set(hairpinAdd).union(others.hairpin(others.families.keys))
            hairpin.subtract(hairpinDel)
            do { try nf.replaceAll(elements: Array(all), hairpin: Array(hairpin)) } catch {
                throw .operational("cannot rebuild table inet \(config.table)", cause: "\(error)")
            }
        }
        // The hook exits right after: let a child pay the socket's slow release after deletes.
        if rebuild || !removing.isEmpty || !hairpinDel.isEmpty { nf.closeInBackground() }
        try syncFirewall(networks, nf: nf)
    }

    /// Makes the hairpin sets and libvirt's accept rules match the applied forwards in the journal:
    /// subnets and rules for every network that has one, none for `others` that no longer do.
    /// Reconcile's last step (the hooks keep both in step with each change).
    func syncNetworks(db: JournalDB, nf: NetfilterSession, others: Set<String>) throws(VirtPortError) {
        var needs = networksOf(try db.activeMappings())
        needs.unneeded = others.subtracting(needs.families.keys)
        let resolver = resolver()
        for name in needs.unneeded { needs.definitions[name] = resolver.network(name) }
        do {
            let current = (try? nf.listHairpin()) ?? []
            let wanted = Set(needs.hairpin(needs.families.keys))
            let add = wanted.subtracting(current), del = Set(current).subtracting(wanted)
            if !add.isEmpty || !del.isEmpty {
                try nf.apply(adding: [], removing: [], hairpinAdding: Array(add), hairpinRemoving: Array(del))
            }
        } catch {
            throw .operational("cannot update the hairpin sets", cause: "\(error)")
        }
        try syncFirewall(needs, nf: nf)
    }

    /// Removes every forward virtport holds (`virtport uninstall`): the journal's mappings are
    /// closed with history, the table is deleted and libvirt's accept rules go with them.
    func removeEverything(reason: String) throws(VirtPortError) -> Int {
        guard JournalDB.exists(path: config.databasePath) else { return 0 }
        let db = try journal()
        let lock = try changeLock()
        try lock.exclusive()
        let rows = try db.activeMappings()
        var intents: [[ActiveMapping]] = []
        for uuid in Set(rows.map(\.domain.uuid)).sorted() {
            intents.append(try db.beginRemoveAll(domainUUID: uuid, reason: reason, now: nowMicros()))
        }
        let nf = try kernel()
        do { try nf.deleteTable() } catch {
            throw .operational("cannot delete table inet \(config.table)", cause: "\(error)")
        }
        try syncNetworks(db: db, nf: nf, others: Set(rows.compactMap(\.mapping.network)))
        for rows in intents { try db.commitRemove(rows, reason: reason, now: nowMicros()) }
        nf.closeInBackground()
        return rows.count
    }

    func crashPoint(_ name: String) {
        if fault == name { _exit(86) }
    }
}
