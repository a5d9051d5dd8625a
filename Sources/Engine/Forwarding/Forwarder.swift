#if canImport(Glibc)
import Glibc
#endif
import Journal
import Netfilter
import POSIX
public import VirtPortCore

/// The plan → journal intent → one netlink batch → mark applied protocol (README "Journal"), for
/// one domain at a time. A crash between any two steps leaves `adding`/`removing` rows that
/// `virtport reconcile` finishes. Works with whatever `Resources` it is given: a hook's own or the
/// agent's warm ones.
public struct Forwarder {
    public let resources: Resources
    var config: Config { resources.config }
    /// libvirt's files as this change sees them: one resolver for the plan and the change, so each
    /// network's XML is read and parsed once per operation.
    let files: LibvirtFiles
    /// Warnings (to the caller and the system log) and decisions (to the system log).
    let warnings: Warnings
    var log: EventLog { warnings.log }
    /// The rule kinds whose full state a rebuild of the table must keep (`othersInTable`).
    var kinds: [any RuleKind] = RuleKinds.all

    /// - Parameter diagnostics: where warnings go besides the system log (a hook's stderr, the
    ///   agent's reply to a hook, a command's stderr).
    public init(resources: Resources, diagnostics: any Diagnostics) {
        self.resources = resources
        files = LibvirtFiles(config: resources.config, overrides: [])
        warnings = Warnings(diagnostics: diagnostics, log: EventLog(config: resources.config))
    }

    init(context: KindContext) {
        resources = context.resources
        files = context.files
        warnings = context.warnings
        kinds = context.kinds
    }

    /// Read-only conflict check (qemu `prepare`): a host socket or another running domain already
    /// holds a port.
    public func checkConflicts(_ plan: Plan) throws(VirtPortError) {
        try HostSockets.checkNotBound(plan.mappings)
        guard let db = try resources.existingJournal(readOnly: true) else { return }
        try db.checkConflicts(domain: DomainRef(name: plan.domainName, uuid: plan.domainUUID), desired: plan.mappings)
    }

    /// Writes the journal intents of `plan` (qemu `start`/`reconnect`; the caller holds the
    /// change lock shared and has a transaction open) and says what the kernel needs. Unchanged
    /// rows are re-added too: cheap (no NLM_F_EXCL) and it heals a flushed table.
    func stageApply(_ plan: Plan, reason: String, db: JournalDB) throws(VirtPortError) -> ForwardChange {
        let domain = DomainRef(name: plan.domainName, uuid: plan.domainUUID)
        let delta = try db.beginApply(domain: domain, desired: plan.mappings, reason: reason, now: nowMicros())
        let keep = (delta.adding + delta.unchanged).map(\.mapping)
        let gone = delta.removing.map(\.mapping)
        let change = ForwardChange(forwarder: self, domain: domain, reason: reason, delta: delta, removed: nil)
        // Nothing for the kernel (no forwards, or only pending ones): no table is created.
        if !(keep.allSatisfy(\.isPending) && gone.allSatisfy(\.isPending)) {
            let needs = try NetworkNeeds.forChange(keeping: keep, removing: delta.removing, db: db, resolver: resolver())
            change.kernel = (keep.flatMap(\.elements), gone.flatMap(\.elements), needs)
        }
        return change
    }

    /// Writes the removal intents of every mapping of a domain (qemu `stopped`/`release`); nil
    /// when it has none.
    func stageRemove(domainUUID: String, reason: String, db: JournalDB) throws(VirtPortError) -> ForwardChange? {
        let rows = try db.beginRemoveAll(domainUUID: domainUUID, reason: reason, now: nowMicros())
        guard let first = rows.first else { return nil }
        let change = ForwardChange(forwarder: self, domain: first.domain, reason: reason, delta: nil, removed: rows)
        let needs = try NetworkNeeds.forChange(keeping: [], removing: rows, db: db, resolver: resolver())
        change.kernel = ([], rows.flatMap(\.mapping.elements), needs)
        return change
    }

    /// Network `started`: libvirt has just rebuilt its own rules, often because the firewall was
    /// reloaded (which may have flushed ours too). Rebuilds virtport's table from the journal in one
    /// batch and puts libvirt's accept rule for this network back in front of libvirt's reject.
    /// Rare, so thoroughness beats the cost of a table replace here.
    /// The caller holds the change lock exclusively.
    func reapply(network: NetworkDefinition, reason: String, db: JournalDB) throws(VirtPortError) {
        do {
            let all = try db.activeMappings()
            // Fail-closed: forwards another kind holds stay out of the rebuilt table.
            let heldRows = try ForwardKind.held(all, db: db)
            let held = Set(heldRows.map(\.id))
            let rows = all.filter { $0.isInKernel && !held.contains($0.id) }
            if rows.isEmpty && held.isEmpty { return }
            let needs = NetworkNeeds.of(rows.map(\.mapping), resolver: resolver(overrides: [network]))
            let nf = try resources.kernel()
            do {
                try nf.replaceAll(elements: rows.flatMap(\.mapping.elements), hairpin: needs.hairpin(needs.families.keys),
                                  others: try othersInTable(db: db))
            } catch {
                throw .operational("cannot rebuild table inet \(config.table)", cause: error)
            }
            try ForwardKind.reopen(heldRows, db: db)
            if let families = needs.families[network.name] {
                try LibvirtFirewall(nf: nf, warn: warnings.emit).ensure(network, families: families)
            }
            log.info("rebuilt table inet \(config.table) from the journal: \(rows.count) forwards; "
                + "libvirt's accept rule for network \(network.name) checked (\(reason))")
        }
    }

    /// Removes every forward virtport holds (`virtport uninstall`): the journal's mappings are
    /// closed with history, the table is deleted and libvirt's accept rules go with them.
    /// The caller holds the change lock exclusively when `db` is not nil.
    func removeEverything(reason: String, db: JournalDB?) throws(VirtPortError) -> Int {
        guard let db else {
            // No journal, but a table may still be there (a journal moved aside, a crash).
            do { try resources.kernel().deleteTable() } catch {
                throw .operational("cannot delete table inet \(config.table)", cause: error)
            }
            return 0
        }
        do {
            let rows = try db.activeMappings()
            var intents: [[ActiveMapping]] = []
            for uuid in Set(rows.map(\.domain.uuid)).sorted() {
                intents.append(try db.beginRemoveAll(domainUUID: uuid, reason: reason, now: nowMicros()))
            }
            let nf = try resources.kernel()
            let elements = rows.filter(\.isInKernel).flatMap(\.mapping.elements)
            // Read before the table goes: its flows are then deleted by tuple, not by walks.
            let record = nf.flowRecord()
            do { try nf.deleteTable() } catch {
                throw .operational("cannot delete table inet \(config.table)", cause: error)
            }
            if !elements.isEmpty {
                do { try nf.forgetFlows(of: elements, record: record) } catch {
                    warnings.emit("cannot delete the connection tracking entries of \(elements.count) forwards: \(error)")
                }
            }
            try NetworkSync(nf: nf, resolver: resolver(), warn: warnings.emit)
                .sync(db: db, others: Set(rows.compactMap(\.mapping.network)))
            for rows in intents {
                try db.commitRemove(rows, reason: reason, now: nowMicros())
                if let first = rows.first { log.change(domain: first.domain, adding: [], removing: rows, reason: reason) }
            }
            nf.closeInBackground()
            return rows.count
        }
    }

    /// One netlink batch for the elements and hairpin subnets, then libvirt's accept rule. If part of
    /// virtport's table is missing (someone deleted a map or chain), the table is rebuilt in one
    /// batch from the journal plus this change, with `lock` converted to exclusive (the caller
    /// holds it shared).
    /// `sent`: the change already went in with a shared batch (`ForwardChange.batchPart`): only
    /// the checks and the side effects are left.
    /// `held`: elements of this change's forwards another kind holds (fail-closed): a rebuild leaves
    /// them out, and the journal's holds on other domains' forwards (`domainUUID`: this change's,
    /// whose holds are the change's own to decide).
    func program(db: JournalDB, lock: ChangeLock, adding: [ForwardElement], removing: [ForwardElement],
                 networks: NetworkNeeds, sent: Bool = false, held: Set<ForwardElement> = [],
                 domainUUID: String? = nil) throws(VirtPortError) {
        let nf = try resources.kernel()
        let hairpinAdd = networks.hairpin(networks.families.keys)
        let hairpinDel = networks.hairpin(networks.unneeded)
        var rebuild = false
        var created = false
        // The agent checks the skeleton after its answer (`Resources.later`): a broken one is
        // rebuilt there, under the same lock, as it would be here.
        var checkLater = false
        do throws(NetfilterError) {
            if !sent {
                created = try nf.apply(adding: adding, removing: removing, hairpinAdding: hairpinAdd,
                                       hairpinRemoving: hairpinDel)
            }
            // One whose chains were flushed or deleted behind our back accepts elements but
            // forwards nothing: rebuild it.
            if !created && !adding.isEmpty {
                if resources.defersWork { checkLater = true } else { rebuild = try !nf.skeletonIsIntact() }
            }
        } catch where error.isMissingObject {
            rebuild = true
            checkLater = false
        } catch {
            throw .operational("nftables batch failed", cause: error)
        }
        // A table this call created holds only this change: add the journal's other forwards.
        if created { rebuild = try db.hasAppliedMappings() }
        if rebuild {
            try rebuildTable(db: db, lock: lock, nf: nf, adding: adding, removing: removing, hairpinAdd: hairpinAdd,
                             hairpinDel: hairpinDel, held: held, exceptDomain: domainUUID,
                             why: created ? "was missing" : "had chains, maps or rules missing")
        }
        // Connections the removed forwards translated must not keep following them (README
        // "Connection tracking"). After the kernel change, so a packet in between cannot recreate
        // one through the old element. A rebuilt table lost its flow record: walk instead.
        let rebuilt = rebuild
        resources.later { [self] in
            var walk = rebuilt
            if checkLater {
                do throws(VirtPortError) {
                    let intact: Bool
                    do { intact = try nf.skeletonIsIntact() } catch { throw .operational("cannot read table inet \(config.table)", cause: error) }
                    if !intact {
                        // After the commit: this change's holds are in the journal with the others'.
                        try rebuildTable(db: db, lock: lock, nf: nf, adding: adding, removing: removing, hairpinAdd: hairpinAdd,
                                         hairpinDel: hairpinDel, held: held, exceptDomain: nil,
                                         why: "had chains, maps or rules missing")
                        walk = true
                    }
                } catch {
                    warnings.emit("self-check of table inet \(config.table) after a start: \(error); run 'virtport reconcile'")
                }
            }
            forgetFlows(nf, removing, walk: walk)
        }
        // A hook exits right after: let a child pay the socket's slow release after deletes.
        if rebuild || !removing.isEmpty || !hairpinDel.isEmpty { nf.closeInBackground() }
        try NetworkSync(nf: nf, resolver: resolver(), warn: warnings.emit).syncFirewall(networks)
    }

    /// The table rebuilt from the journal plus this change in one batch, with `lock` converted to
    /// exclusive (the caller holds it shared): no change of another domain between the read and
    /// the batch.
    func rebuildTable(db: JournalDB, lock: ChangeLock, nf: any FirewallDriver, adding: [ForwardElement],
                      removing: [ForwardElement], hairpinAdd: [Subnet], hairpinDel: [Subnet],
                      held: Set<ForwardElement>, exceptDomain: String?, why: String) throws(VirtPortError) {
        try lock.convertToExclusive()
        let journal = try db.activeMappings()
        let rows = journal.filter(\.isInKernel)
        let others = NetworkNeeds.of(rows.map(\.mapping), resolver: resolver())
        var all = Set(rows.flatMap(\.mapping.elements))
        all.subtract(removing)
        all.formUnion(adding)
        // Fail-closed: held forwards (this change's, and the journal's holds on other domains'
        // forwards; `exceptDomain`'s are the change's own to decide) stay out.
        all.subtract(held)
        all.subtract(try ForwardKind.held(journal, db: db).filter { $0.domain.uuid != exceptDomain }.flatMap(\.mapping.elements))
        var hairpin = Set(hairpinAdd).union(others.hairpin(others.families.keys))
        hairpin.subtract(hairpinDel)
        do { try nf.replaceAll(elements: Array(all), hairpin: Array(hairpin), others: try othersInTable(db: db)) } catch {
            throw .operational("cannot rebuild table inet \(config.table)", cause: error)
        }
        log.notice("healed: table inet \(config.table) \(why): rebuilt from the journal in one batch, \(all.count) elements")
    }

    /// Deletes the conntrack entries `removing` created; a failure is a warning, never the
    /// change's failure (the forwards are already right; only old flows linger).
    func forgetFlows(_ nf: any FirewallDriver, _ removing: [ForwardElement], walk: Bool) {
        if removing.isEmpty { return }
        let started = MonotonicClock.micros()
        do {
            if walk {
                try nf.forgetFlowsByWalking(removing)
                log.info("conntrack: flows of \(removing.count) removed forwards deleted by walking the table "
                    + "in \(MonotonicClock.micros() - started) us")
            } else {
                let done = try nf.forgetFlows(of: removing)
                if done.deleted == 0 && done.walks == 0 { return }
                log.info("conntrack: \(done.deleted) flows of \(removing.count) removed forwards deleted in "
                    + "\(MonotonicClock.micros() - started) us" + (done.walks > 0 ? " (\(done.walks) table walks)" : ""))
            }
        } catch {
            warnings.emit("cannot delete the connection tracking entries of \(removing.count) removed forwards: \(error); "
                + "their ongoing connections keep their old destination until they end")
        }
    }

    /// How long an untranslated entry left by a flow to a released port can live: UDP's stream
    /// timeout (nf_conntrack_udp_timeout_stream, 120 s) with margin. A flow older than its release
    /// by more than this has lost its entry anyway.
    static let untranslatedFlowWindow: Int64 = 180_000_000

    /// A port released moments ago and taken again now (a VM stopped, another started on its
    /// port; a reboot): a flow that kept sending in between holds an untranslated entry that
    /// would keep it off the new forward. Deleted here, after the change (one filtered walk per
    /// port, at most 16 ports per start). Ports nobody released lately cost one journal query.
    func forgetUnforwardedFlows(db: JournalDB, adding: [Mapping]) {
        let since = nowMicros() - Self.untranslatedFlowWindow
        var ports: [(UInt16, IPProto, Family)] = []
        for mapping in adding {
            guard let family = mapping.family, !mapping.isPending,
                  (try? db.releasedRecently(proto: mapping.proto, hostPorts: mapping.hostPorts, since: since)) == true
            else { continue }
            for port in mapping.hostPorts.start...mapping.hostPorts.end where ports.count < 16 {
                ports.append((port, mapping.proto, family))
            }
        }
        if ports.isEmpty { return }
        do {
            let nf = try resources.kernel()
            try nf.forgetFlows(toHostPorts: ports)  // one datagram for all ports (branch speed)
        } catch {
            warnings.emit("cannot delete the connection tracking entries of flows to released ports: \(error)")
        }
    }

    /// What other rule kinds keep in `table inet <table>`: a rebuild of the table must put it back
    /// in the same batch (`RuleKind.fullState`).
    func othersInTable(db: JournalDB) throws(VirtPortError) -> [any BatchPart] {
        let context = KindContext(resources: resources, warnings: warnings, files: files, kinds: kinds)
        var parts: [any BatchPart] = []
        for kind in kinds where kind.name != ForwardKind.name {
            if let part = try kind.fullState(in: "inet \(config.table)", db: db, context: context) { parts.append(part) }
        }
        return parts
    }

    func resolver(overrides: [NetworkDefinition] = []) -> LibvirtFiles {
        overrides.isEmpty ? files : LibvirtFiles(config: config, overrides: overrides)
    }
}
