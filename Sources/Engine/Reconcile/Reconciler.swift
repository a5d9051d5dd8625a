public import Journal
import Netfilter
public import VirtPortCore

/// `virtport reconcile`: makes the journal, the kernel (read back over netlink) and the running
/// domains agree, and says what it fixed. Idempotent: a second run finds nothing to do.
///
/// Running domains with metadata get exactly their planned mappings (half-done intents finished);
/// mappings of domains that are not running are removed; kernel elements nobody owns are deleted;
/// missing ones are re-added; a damaged or missing table is rebuilt in one batch. Two steps:
/// `plan` reads everything and decides (`ReconcilePlan`, all a dry run prints), `apply` writes
/// the journal intents, sends one batch and confirms.
public struct Reconciler {
    public let resources: Resources
    /// The running domains by uuid (from libvirt or its status files: the caller's business).
    public let running: [String: RunningDomain]
    let diagnostics: any Diagnostics
    /// One resolver for the plan and the apply (each network's XML parsed once per run).
    let files: LibvirtFiles
    var config: Config { resources.config }

    public init(resources: Resources, running: [String: RunningDomain],
                diagnostics: any Diagnostics = StandardErrorDiagnostics()) {
        self.resources = resources
        self.running = running
        self.diagnostics = diagnostics
        files = LibvirtFiles(config: resources.config, overrides: [])
    }

    /// Plans, and applies unless `dryRun`; returns what it did (would do).
    public func run(dryRun: Bool, reason: String) throws(VirtPortError) -> [Fix] {
        let context = KindContext(resources: resources, diagnostics: diagnostics, files: files)
        if dryRun {
            var fixes: [Fix] = []
            let db = try openJournal(dryRun: true, fixes: &fixes)
            for kind in RuleKinds.all { fixes += try kind.reconcile(running: running, db: db, reason: reason, context: context).fixes }
            return fixes
        }
        // Alone against hooks mid-change from reading the journal to the last kernel batch.
        return try resources.changeLock().withExclusive { () throws(VirtPortError) -> [Fix] in
            var fixes: [Fix] = []
            let db = try openJournal(dryRun: false, fixes: &fixes)
            let lock = try resources.changeLock()
            guard let db else {
                for kind in RuleKinds.all { fixes += try kind.reconcile(running: running, db: nil, reason: reason, context: context).fixes }
                return fixes
            }
            // Each kind plans (reads, then decides with no I/O) after the previous one applied;
            // one that fails holds what depends on it (fail-closed), the others still run.
            do throws(VirtPortError) {
                try DomainLifecycle.eachKind(RuleKinds.all, failClosed: db, reason: reason, context: context) { (kind) throws(VirtPortError) in
                    let plan = try kind.reconcile(running: running, db: db, reason: reason, context: context)
                    fixes += try plan.apply(db: db, lock: lock, context: context)
                }
            } catch {
                for f in fixes { Self.log(f, to: EventLog(config: config)) }
                throw error
            }
            for f in fixes { Self.log(f, to: EventLog(config: config)) }
            return fixes
        }
    }

    /// One line per fix in the system log: what reconcile changed (or left alone, and why).
    static func log(_ f: Fix, to log: EventLog) {
        let who = f.domain.map { "domain '\(Quoted.message($0))' " } ?? ""
        let line = "\(f.action == .skip ? "skipped" : "fixed \(f.action.rawValue)"): \(who)\(f.what) (\(f.reason))"
        if f.action == .skip || f.action == .rebuildJournal { log.warning(line) } else { log.notice(line) }
    }

    /// Reads the journal's rows, the kernel's table and libvirt's chains, and decides; changes nothing.
    public func plan(db: JournalDB?, reason: String) throws(VirtPortError) -> ReconcilePlan {
        let rows = try db?.activeMappings() ?? []
        let resolver = files
        let policy = config.policy
        let kernel = try readKernel()
        var plan = ReconcilePlan.make(rows: rows, running: running, kernel: kernel, table: config.table,
                                      reason: reason) { (d) throws(VirtPortError) -> [Mapping] in
            try Planner.plan(domain: d, resolver: resolver, policy: policy).mappings
        }
        // Fail-closed: forwards another kind holds (their source filter not in place) stay out of
        // the kernel, their intents open; the holding kind ran first and dropped its holds if it could.
        if let db, case let holds = try db.holds(kind: ForwardKind.name), !holds.isEmpty {
            plan.hold(holds, rows: rows, kernel: kernel, table: config.table, reason: reason)
        }
        // A kernel that cannot be read (no CAP_NET_ADMIN) is already the plan's finding.
        if kernel.readError == nil { plan.fixes += try acceptRuleFixes(plan.kept, reason: reason) }
        return plan
    }

    /// libvirt's accept rule, for each network the plan keeps forwards on: one fix per subnet where
    /// it is missing, doubled, or below libvirt's reject (`apply`'s NetworkSync puts it right).
    func acceptRuleFixes(_ mappings: [Mapping], reason: String) throws(VirtPortError) -> [Fix] {
        let findings = try NetworkSync.acceptRuleFindings(mappings, nf: try resources.kernel(), resolver: files)
        return findings.map { name, f in
            Fix(.acceptRule, domain: nil, what: "network \(name): rule \(LibvirtFirewall.tag(f.bridge)) (\(f.subnet)) \(f.text)",
                reason: "\(reason): \(f.consequence)")
        }
    }

    /// Writes the plan's journal intents, brings the kernel to the target in one batch, confirms
    /// the intents, syncs hairpin subnets and libvirt's accept rules, and prunes old history.
    public func apply(_ plan: ReconcilePlan, db: JournalDB, reason: String) throws(VirtPortError) -> [Fix] {
        var plan = plan
        var applies: [(DomainRef, ApplyDelta, String)] = []
        var removals: [([ActiveMapping], String)] = []
        var refused = false
        for (uuid, want) in plan.desired.sorted(by: { $0.value.domain.name < $1.value.domain.name }) {
            do {
                if want.mappings.isEmpty {
                    removals.append((try db.beginRemoveAll(domainUUID: uuid, reason: want.reason, now: nowMicros()), want.reason))
                } else {
                    let delta = try db.beginApply(domain: want.domain, desired: want.mappings, reason: want.reason, now: nowMicros())
                    applies.append((want.domain, delta, want.reason))
                }
            } catch {
                refused = true
                plan.fixes.append(Fix(.skip, domain: want.domain.name, what: "journal refused the mappings", reason: error.message, error: error))
            }
        }
        let rows = try db.activeMappings()
        if refused {
            // The kernel follows what the journal now says, not the prediction.
            plan.target = Set(rows.filter { $0.isInKernel && !plan.isHeld($0.domain.uuid, $0.mapping) }.flatMap(\.mapping.elements))
            plan.planKernel(try readKernel(), table: config.table, rows: rows, reason: reason)
        }
        let nf = try resources.kernel()
        let others = plan.rebuildTable ? try Forwarder(resources: resources, diagnostics: diagnostics).othersInTable(db: db) : []
        do {
            if plan.rebuildTable {
                try nf.replaceAll(elements: Array(plan.target), hairpin: [], others: others)
            } else if !plan.kernelAdd.isEmpty || !plan.kernelDelete.isEmpty {
                try nf.apply(adding: Array(plan.kernelAdd), removing: Array(plan.kernelDelete))
            }
        } catch {
            throw .operational("reconcile: nftables batch failed", cause: error)
        }
        for (ref, delta, why) in applies {
            var delta = delta
            if !plan.held.isEmpty {
                // Held forwards: not in the kernel, so not applied (one that was is open again).
                let held = (delta.adding + delta.unchanged).filter { plan.isHeld(ref.uuid, $0.mapping) }
                delta.adding.removeAll { plan.isHeld(ref.uuid, $0.mapping) }
                let wereApplied = held.filter { $0.state == .applied }.map(\.id)
                if !wereApplied.isEmpty { _ = try db.setState(ids: wereApplied, state: .adding) }
            }
            try db.commitApply(domain: ref, delta: delta, reason: why, now: nowMicros())
        }
        for (rows, why) in removals { try db.commitRemove(rows, reason: why, now: nowMicros()) }
        try NetworkSync(nf: nf, resolver: files, warn: Warnings(diagnostics: diagnostics, log: EventLog(config: config)).emit)
            .sync(db: db, others: plan.networks)
        if config.historyRetentionDays > 0 {
            _ = try db.pruneHistory(olderThan: nowMicros() - Int64(config.historyRetentionDays) * 86_400_000_000)
        }
        return plan.fixes
    }

    /// virtport's table as it is: elements, and whether its chains and rules are all there.
    func readKernel() throws(VirtPortError) -> KernelState {
        let nf = try resources.kernel()
        do throws(NetfilterError) {
            let elements = Set(try nf.listElements())
            return KernelState(elements: elements, skeletonIntact: try nf.skeletonIsIntact())
        } catch where error.isMissingTable {
            return KernelState(tableMissing: true)
        } catch {
            return KernelState(readError: "\(error)")
        }
    }

    /// Opens (or, when missing or corrupt, rebuilds) the journal. Dry runs never create one.
    func openJournal(dryRun: Bool, fixes: inout [Fix]) throws(VirtPortError) -> JournalDB? {
        let path = config.databasePath
        if !JournalDB.exists(path: path) {
            if dryRun { return nil }
            fixes.append(Fix(.rebuildJournal, domain: nil, what: path, reason: "database missing: rebuilt from running domains"))
            return try resources.journal()
        }
        do {
            let db = dryRun ? try JournalDB(path: path, readOnly: true) : try resources.journal()
            try db.quickCheck()
            return db
        } catch where error.code == .corruptJournal && !dryRun {
            let aside = try JournalDB.moveAside(path: path)
            diagnostics.emit("\(error.message): moved aside to \(aside); rebuilding from running domains")
            fixes.append(Fix(.rebuildJournal, domain: nil, what: path, reason: "corrupt database moved to \(aside)"))
            return try JournalDB(path: path)
        }
    }
}
