import Foundation
import Testing
@testable import Engine
import Journal
import Netfilter
import VirtPortCore

/// The rule-kind lifecycle (forwards and port guards) through the recording firewall: what each
/// step sends, in how many batches, under how many locks and transactions, and how each kind
/// recovers when the kernel refuses.
@Suite struct LifecycleTests {
    let guarded = tcp(47222, to: 22) + "<vp:guard ip='192.168.122.10' isolated='yes'/>"

    /// A firewall whose `vnet5` is a bridge port (isolated off, group_fwd_mask 0).
    func firewall() -> RecordingFirewall {
        let fw = RecordingFirewall()
        fw.isolatedFlags["vnet5"] = false
        fw.masks["vnet5"] = 0
        return fw
    }

    func start(_ box: Sandbox, _ fw: RecordingFirewall, _ body: String? = nil, lines: CollectedDiagnostics = .init()) throws -> Resources {
        let resources = Resources.perProcess(box.config, kernel: fw)
        let code = QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, body ?? guarded), resources: resources,
                                diagnostics: lines)
        #expect(code == 0, "\(lines.lines)")
        return resources
    }

    @Test func guardedStartIsOneLockOneBatchTwoTransactions() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        let lines = CollectedDiagnostics()
        let resources = Resources.perProcess(box.config, kernel: fw)
        let opened = try resources.journal().transactionsBegun  // the journal's own creation
        try DomainSync.apply(try DomainXML.parse(domain("web", uuidA, guarded)), reason: "test", resources: resources,
                             diagnostics: lines)
        #expect(lines.lines.isEmpty)
        // Forwards and guards went to the kernel in one batch.
        #expect(fw.batches.count == 1)
        #expect(fw.batches.first?.count == 2)
        #expect(fw.elements.count == 1)
        #expect(fw.ports["vnet5"]?.addresses == [IPAddress("192.168.122.10")!])
        #expect(try resources.changeLock().acquisitions == 1)
        #expect(try resources.journal().transactionsBegun - opened == 2)
        // The port's flags, and the journal says applied for both kinds.
        #expect(fw.isolatedFlags["vnet5"] == true)
        #expect(fw.masks["vnet5"] == BridgePort.guardedGroups)
        let db = try box.journal()
        #expect(try db.activeMappings().map(\.state) == [.applied])
        #expect(try db.activeGuards().map(\.state) == [.applied])
        #expect(try db.activeGuards().first?.isolatedByUs == true)
    }

    @Test func guardedStopIsOneBatchAndGivesTheFlagsBack() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        _ = try start(box, fw)
        let resources = Resources.perProcess(box.config, kernel: fw)
        let opened = try resources.journal().transactionsBegun
        let lines = CollectedDiagnostics()
        #expect(QemuWork.run(.stopped, domainName: "web", input: domain("web", uuidA, guarded), resources: resources,
                             diagnostics: lines) == 0)
        #expect(lines.lines.isEmpty)
        #expect(fw.batches.count == 2)
        #expect(fw.batches.last?.count == 2)
        #expect(fw.elements.isEmpty && fw.ports.isEmpty)
        #expect(fw.isolatedFlags["vnet5"] == false)
        #expect(fw.masks["vnet5"] == 0)
        #expect(try resources.changeLock().acquisitions == 1)
        #expect(try resources.journal().transactionsBegun - opened == 2)
        let db = try box.journal()
        #expect(try db.activeMappings().isEmpty)
        #expect(try db.activeGuards().isEmpty)
        #expect(try db.guardHistory().map(\.action) == ["on", "off"])
        // release after stopped: nothing left, nothing sent.
        let again = Resources.perProcess(box.config, kernel: fw)
        #expect(QemuWork.run(.release, domainName: "web", input: domain("web", uuidA, guarded), resources: again,
                             diagnostics: lines) == 0)
        #expect(fw.batches.count == 2)
    }

    @Test func aMissingBridgeTableIsRebuiltFromTheJournal() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        fw.bridgeTable = false
        _ = try start(box, fw)
        // The shared batch was refused (nothing applied): the forwards sent their own, the guards
        // found their table missing and rebuilt it from the journal (this guard included).
        #expect(fw.calls.contains { $0.hasPrefix("send") })
        #expect(fw.calls.contains("apply +1 -0"))
        #expect(fw.calls.contains("replaceGuards 1"))
        #expect(fw.ports["vnet5"] != nil && fw.elements.count == 1)
        #expect(try box.journal().activeGuards().map(\.state) == [.applied])
    }

    @Test func aRefusedSharedBatchFallsBackToEachKindsOwn() throws {
        for errno in [EEXIST, ENOENT] {
            let box = Sandbox()
            defer { box.cleanup() }
            let fw = firewall()
            fw.failNextSend = errno
            _ = try start(box, fw)
            #expect(fw.batches == [["inet +1 -0"], ["bridge +1 -0"]])
            #expect(try box.journal().activeMappings().map(\.state) == [.applied])
            #expect(try box.journal().activeGuards().map(\.state) == [.applied])
        }
    }

    @Test func aSharedBatchRefusedForAnythingElseFailsTheChangeAndKeepsTheIntents() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        fw.failNextSend = EPERM
        let lines = CollectedDiagnostics()
        let code = QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, guarded),
                                resources: .perProcess(box.config, kernel: fw), diagnostics: lines)
        #expect(code == 0)
        #expect(lines.lines.count == 1)
        #expect(lines.lines.first?.contains("nftables batch failed") == true)
        #expect(fw.batches.isEmpty)
        let db = try box.journal()
        #expect(try db.activeMappings().map(\.state) == [.adding])
        #expect(try db.activeGuards().map(\.state) == [.adding])
    }

    @Test func aGuardBatchFailureKeepsTheForwardsAndReportsOneLine() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        fw.failNextSend = EEXIST
        fw.failNextChangeGuards = EPERM
        let lines = CollectedDiagnostics()
        let resources = Resources.perProcess(box.config, kernel: fw)
        let code = QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, guarded), resources: resources,
                                diagnostics: lines)
        #expect(code == 0)
        #expect(lines.lines.count == 1)
        #expect(lines.lines.first?.contains("nftables batch for table bridge virtport failed") == true)
        let db = try box.journal()
        #expect(try db.activeMappings().map(\.state) == [.applied])
        // The guard's intent stays for reconcile.
        #expect(try db.activeGuards().map(\.state) == [.adding])
    }

    @Test func nothingGuardedCostsTheGuardsNoLockAndNoJournal() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        let resources = Resources.perProcess(box.config, kernel: fw)
        let context = KindContext(resources: resources, diagnostics: CollectedDiagnostics())
        let plan = try Planner.plan(domain: try DomainXML.parse(domain("web", uuidA, tcp(47222, to: 22))), resolver: box.resolver,
                                    policy: box.config.policy)
        #expect(try !GuardKind().needsChange(plan, uuid: uuidA, context: context))
        #expect(try !GuardKind().needsChange(nil, uuid: uuidA, context: context))
        #expect(!FileManager.default.fileExists(atPath: box.config.databasePath))
        // A start of an unguarded domain: one batch with the forwards only.
        _ = try start(box, fw, tcp(47222, to: 22))
        #expect(fw.batches == [["inet +1 -0"]])
        #expect(!fw.calls.contains { $0.hasPrefix("setIsolated") || $0.hasPrefix("guardPart") })
    }

    @Test func pendingForwardsSendNothing() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        // No guest= and no lease yet: the forward waits for an address; the journal has it, the kernel nothing.
        _ = try start(box, fw, "<vp:portForward proto='tcp'><vp:range start='47222' to='22'/></vp:portForward>")
        #expect(fw.batches.isEmpty)
        #expect(!fw.calls.contains { $0.hasPrefix("send") || $0.hasPrefix("apply") })
        #expect(try box.journal().activeMappings().map(\.mapping.isPending) == [true])
    }

    @Test func isolationOnlyGuardSetsTheFlagAndSendsNoGuardElements() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        _ = try start(box, fw, "<vp:guard spoofing='off' isolated='yes'/>")
        #expect(fw.isolatedFlags["vnet5"] == true)
        #expect(fw.ports.isEmpty)
        #expect(!fw.calls.contains("guardPart"))
        // libvirt's own isolated flag (on before us) is never ours to clear.
        let box2 = Sandbox()
        defer { box2.cleanup() }
        let fw2 = firewall()
        fw2.isolatedFlags["vnet5"] = true
        _ = try start(box2, fw2, "<vp:guard spoofing='off' isolated='yes'/>")
        #expect(try box2.journal().activeGuards().first?.isolatedByUs == false)
        _ = QemuWork.run(.stopped, domainName: "web", input: domain("web", uuidA, ""), resources: .perProcess(box2.config, kernel: fw2),
                         diagnostics: CollectedDiagnostics())
        #expect(fw2.isolatedFlags["vnet5"] == true)
    }

    @Test func aTapThatIsGoneAtStopIsNoError() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        _ = try start(box, fw)
        fw.isolatedFlags["vnet5"] = nil
        fw.masks["vnet5"] = nil
        let lines = CollectedDiagnostics()
        #expect(QemuWork.run(.stopped, domainName: "web", input: domain("web", uuidA, guarded),
                             resources: .perProcess(box.config, kernel: fw), diagnostics: lines) == 0)
        #expect(lines.lines.isEmpty)
        #expect(try box.journal().activeGuards().isEmpty)
    }

    @Test func healPutsBackWhatWasFlushedForEveryKind() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        _ = try start(box, fw)
        #expect(try Healer.heal(resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics()).isEmpty)
        fw.elements = []
        fw.ports = [:]
        let healed = try Healer.heal(resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics())
        #expect(healed.count == 2, "\(healed)")
        #expect(healed.contains { $0.contains("map elements of table inet virtport re-added") })
        #expect(healed.contains { $0.contains("rebuilt from the journal in one batch, 1 guarded ports") })
        #expect(fw.elements.count == 1 && fw.ports["vnet5"] != nil)
    }

    @Test func networkStartedPutsBackALostIsolatedFlag() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        _ = try start(box, fw)
        fw.isolatedFlags["vnet5"] = false  // the tap re-enslaved to a new bridge
        fw.masks["vnet5"] = 0
        let xml = Array(Sandbox.defaultNetwork.utf8)
        #expect(NetworkWork.started(name: "default", input: xml, resources: .perProcess(box.config, kernel: fw),
                                    diagnostics: CollectedDiagnostics()) == 0)
        #expect(fw.isolatedFlags["vnet5"] == true)
        #expect(fw.masks["vnet5"] == BridgePort.guardedGroups)
    }

    @Test func uninstallTakesDownEveryKind() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        _ = try start(box, fw)
        let lines = try DomainLifecycle.removeEverything(reason: "uninstall", resources: .perProcess(box.config, kernel: fw),
                                                         diagnostics: CollectedDiagnostics())
        #expect(lines == ["removed: 0 source filter(s) and table inet virtport_src",
                          "removed: 1 active forward(s), table inet virtport and libvirt accept rules",
                          "removed: 1 guarded port(s), table bridge virtport and the isolated flags virtport set"])
        #expect(!fw.inetTable && !fw.bridgeTable)
        #expect(fw.isolatedFlags["vnet5"] == false && fw.masks["vnet5"] == 0)
        let db = try box.journal()
        #expect(try db.activeMappings().isEmpty)
        #expect(try db.activeGuards().isEmpty)
    }

    /// A kind that keeps something in `table inet virtport` beside the forwards.
    struct SharingKind: RuleKind {
        var name: String { "sharing" }
        func tables(_ config: Config) -> [String] { ["inet \(config.table)"] }
        func needsChange(_ plan: Plan?, uuid: String, context: KindContext) throws(VirtPortError) -> Bool { false }
        func stage(_ plan: Plan?, domain: DomainRef, reason: String, db: JournalDB,
                   context: KindContext) throws(VirtPortError) -> (any StagedChange)? { nil }
        func reapply(network: NetworkDefinition, db: JournalDB, reason: String, context: KindContext) throws(VirtPortError) {}
        func heal(db: JournalDB, context: KindContext) throws(VirtPortError) -> [String] { [] }
        func reconcile(running: [String: RunningDomain], db: JournalDB?, reason: String,
                       context: KindContext) throws(VirtPortError) -> any KindReconcile { GuardReconcilePlan() }
        func removeEverything(db: JournalDB?, reason: String, context: KindContext) throws(VirtPortError) -> Int { 0 }
        func removedLine(count: Int, config: Config) -> String { "" }
        func fullState(in table: String, db: JournalDB, context: KindContext) throws(VirtPortError) -> (any BatchPart)? {
            RecordingFirewall.Part(summary: "sharing full state in \(table)", inet: true) { _ in }
        }
    }

    @Test func aRebuildOfTheInetTableKeepsTheOtherKindsState() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        fw.inetSkeletonIntact = false  // someone flushed our chains: the forwards rebuild the table
        let resources = Resources.perProcess(box.config, kernel: fw)
        let plan = try Planner.plan(domain: try DomainXML.parse(domain("web", uuidA, tcp(47222, to: 22))), resolver: box.resolver,
                                    policy: box.config.policy)
        try DomainLifecycle.change(plan, uuid: uuidA, name: "web", reason: "test", resources: resources,
                                   diagnostics: CollectedDiagnostics(), kinds: [ForwardKind(), SharingKind()])
        #expect(fw.batches.last == ["inet rebuilt 1", "sharing full state in inet virtport"])
        #expect(DomainLifecycle.tables(box.config, kinds: [ForwardKind(), SharingKind()]) == ["inet virtport"])
    }

    @Test func theWatchedTablesComeFromTheKinds() {
        #expect(DomainLifecycle.tables(Sandbox().config) == ["inet virtport_src", "inet virtport", "bridge virtport"])
    }

    // MARK: Reconcile: a pure plan per kind, then apply

    func running(_ xml: [UInt8]) throws -> [String: RunningDomain] {
        let d = try DomainXML.parse(xml)
        return [d.uuid: RunningDomain(domain: d, uuid: d.uuid, name: d.name)]
    }

    @Test func reconcileDryRunPlansBothKindsAndWritesNothing() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        _ = try start(box, fw)
        // Someone cleared the isolated flag and flushed the forward: both kinds find it.
        fw.isolatedFlags["vnet5"] = false
        fw.elements = []
        let before = fw.writes.count
        let running = try running(domain("web", uuidA, guarded))
        let fixes = try Reconciler(resources: .perProcess(box.config, kernel: fw), running: running,
                                   diagnostics: CollectedDiagnostics()).run(dryRun: true, reason: "reconcile")
        #expect(fixes.map(\.action) == [.kernelAdd, .addMapping], "\(fixes)")
        #expect(fixes.map(\.guards) == [false, true])
        #expect(fw.writes.count == before, "\(fw.writes.dropFirst(before))")
        // The real run applies the same plan; a second finds nothing.
        let applied = try Reconciler(resources: .perProcess(box.config, kernel: fw), running: running,
                                     diagnostics: CollectedDiagnostics()).run(dryRun: false, reason: "reconcile")
        #expect(applied.map(\.action) == [.kernelAdd, .addMapping])
        #expect(fw.isolatedFlags["vnet5"] == true && fw.elements.count == 1)
        #expect(try Reconciler(resources: .perProcess(box.config, kernel: fw), running: running,
                               diagnostics: CollectedDiagnostics()).run(dryRun: false, reason: "reconcile").isEmpty)
    }

    @Test func guardReconcilePlanIsPure() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let web = try DomainXML.parse(domain("web", uuidA, guarded))
        let plan = try Planner.plan(domain: web, resolver: box.resolver, policy: box.config.policy)
        let ref = DomainRef(name: "web", uuid: uuidA)
        let g = try #require(plan.guards.first)
        let row = GuardRow(domain: ref, plan: g, tap: "vnet5", isolatedByUs: true, state: .applied)
        let gone = GuardRow(domain: DomainRef(name: "old", uuid: uuidB), plan: g, tap: "vnet9", isolatedByUs: false, state: .applied)
        let ok = PortFlags(isolated: true, groupForwardMask: BridgePort.guardedGroups)
        func make(_ rows: [GuardRow], damage: String? = nil, flags: PortFlags = ok) -> GuardReconcilePlan {
            GuardReconcilePlan.make(rows: rows, running: [uuidA], planned: [uuidA: (ref, [g])], damage: damage, keptCount: 1,
                                    flags: ["vnet5": flags], table: "virtport", reason: "reconcile")
        }
        // All in place: nothing to do.
        #expect(make([row]).fixes.isEmpty)
        // A domain that is not running loses its guards; a damaged table is rebuilt; a lost flag re-applied.
        let p = make([row, gone], damage: "table bridge virtport is missing",
                     flags: PortFlags(isolated: false, groupForwardMask: BridgePort.guardedGroups))
        #expect(p.fixes.map(\.action) == [.removeMapping, .rebuildTable, .addMapping])
        #expect(p.removals == [uuidB] && p.rebuild && p.applies.map(\.domain) == [ref])
        #expect(p.fixes.allSatisfy { $0.guards })
        // A lost group_fwd_mask counts too; a running domain without usable XML keeps its guards.
        #expect(make([row], flags: PortFlags(isolated: true, groupForwardMask: 0)).fixes.map(\.action) == [.addMapping])
        let keep = GuardReconcilePlan.make(rows: [gone], running: [uuidB], planned: [:], damage: nil, keptCount: 1, flags: [:],
                                           table: "virtport", reason: "reconcile")
        #expect(keep.fixes.isEmpty)
    }

    @Test func forwardReconcilePlanComesFromTheKind() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        let resources = Resources.perProcess(box.config, kernel: fw)
        let context = KindContext(resources: resources, diagnostics: CollectedDiagnostics())
        // No journal yet, the domain runs: the plan adds its mapping, reading only.
        let plan = try ForwardKind().reconcile(running: try running(domain("web", uuidA, tcp(47222, to: 22))), db: nil,
                                               reason: "reconcile", context: context)
        #expect(plan.fixes.map(\.action) == [.addMapping, .kernelAdd])
        #expect(fw.writes.isEmpty, "\(fw.writes)")
    }
}
