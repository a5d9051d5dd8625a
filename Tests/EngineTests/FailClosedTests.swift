import Foundation
import Testing
@testable import Engine
import Journal
import Netfilter
import VirtPortCore

/// Fail-closed across rule kinds (README "Development: adding a rule kind"): a forward with a
/// `source=` list never goes in the kernel without its filter, in every path where the kinds are
/// applied apart — a change whose shared batch was refused, self-heal, network started, reconcile.
/// The recording firewall refuses every batch with the filter's part (`refuseParts["inet src"]`)
/// while taking the forwards'.
@Suite struct FailClosedTests {
    /// One forward with a list (47222) and one without (47223), same domain.
    let body = "<vp:portForward proto='tcp' guest='192.168.122.10' source='203.0.113.0/24'>"
        + "<vp:range start='47222' to='22'/></vp:portForward>" + tcp(47223, to: 80)

    func elements(_ port: UInt16) -> Set<ForwardElement> {
        Set(Mapping(proto: .tcp, hostAddress: nil, dev: nil, hostPorts: PortRange(port, port),
                    guestAddress: IPAddress("192.168.122.10")!, guestPortStart: port == 47222 ? 22 : 80, mac: nil,
                    network: nil, guestSource: .attribute).elements)
    }

    func states(_ box: Sandbox) throws -> [UInt16: MappingState] {
        Dictionary(try box.journal().activeMappings().map { ($0.mapping.hostPorts.start, $0.state) }, uniquingKeysWith: { a, _ in a })
    }

    func start(_ box: Sandbox, _ fw: RecordingFirewall, lines: CollectedDiagnostics) -> Int32 {
        QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, body),
                     resources: .perProcess(box.config, kernel: fw), diagnostics: lines)
    }

    /// A start whose shared batch is refused for a missing object, and whose filter's own batch
    /// is refused: the filtered forward is held, the other one applied.
    func heldStart(_ box: Sandbox, _ fw: RecordingFirewall) throws -> CollectedDiagnostics {
        fw.failNextSend = ENOENT
        fw.refuseParts["inet src"] = EPERM
        let lines = CollectedDiagnostics()
        #expect(start(box, fw, lines: lines) == 0)  // on_internal_error = "warn": the VM starts
        return lines
    }

    @Test func aFilterThatCannotBePutInHoldsItsForwardOnly() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let log = try box.syslog()
        let fw = RecordingFirewall()
        let lines = try heldStart(box, fw)
        // Not reachable from anywhere: the filtered forward's DNAT is not in; the other is.
        #expect(fw.elements.isDisjoint(with: elements(47222)))
        #expect(fw.elements.isSuperset(of: elements(47223)))
        #expect(try states(box) == [47222: .adding, 47223: .applied])
        // The journal says why.
        let holds = try box.journal().holds()
        #expect(holds.count == 1)
        #expect(holds.first?.kind == ForwardKind.name && holds.first?.by == SourceFilterKind.name)
        #expect(holds.first?.key == "tcp|||47222")
        #expect(holds.first?.cause.contains("Operation not permitted") == true, "\(holds)")
        // The caller and the system log are told: the VM, the forward, the cause.
        let held = lines.lines.filter { $0.contains("not applied") }
        #expect(held.count == 1, "\(lines.lines)")
        #expect(held.first?.contains("domain 'web' forward tcp *:47222 not applied: source filters not in place") == true)
        #expect(log.lines().contains { $0.contains("domain 'web' forward tcp *:47222 not applied") && $0.contains("Operation not permitted") })
        // The change itself failed: the policy's line.
        #expect(lines.lines.contains { $0.contains("cannot rebuild table inet virtport_src") })
    }

    @Test func theRefusePolicyFailsTheHook() throws {
        let box = Sandbox { $0.onInternalError = .refuse }
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        fw.failNextSend = ENOENT
        fw.refuseParts["inet src"] = EPERM
        #expect(start(box, fw, lines: CollectedDiagnostics()) != 0)
        #expect(fw.elements.isDisjoint(with: elements(47222)))
    }

    @Test func aLaterStartPutsFilterAndForwardInTogether() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        _ = try heldStart(box, fw)
        // Still refused: a reconnect keeps it held (the shared batch is refused as a whole).
        #expect(start(box, fw, lines: CollectedDiagnostics()) == 0)
        #expect(fw.elements.isDisjoint(with: elements(47222)))
        fw.refuseParts = [:]
        let lines = CollectedDiagnostics()
        #expect(start(box, fw, lines: lines) == 0)
        #expect(lines.lines.isEmpty, "\(lines.lines)")
        // One atomic batch: the filter's rebuild and the forward.
        #expect(fw.batches.last?.first == "inet src: rebuild with 1 filters")
        #expect(fw.elements.isSuperset(of: elements(47222)))
        #expect(try states(box) == [47222: .applied, 47223: .applied])
        #expect(try box.journal().holds().isEmpty)
    }

    @Test func aRestartThatRebuildsTheForwardsTableCompletesItsOwnHeldForward() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        _ = try heldStart(box, fw)
        // The filter can go in now, but the forwards' table is gone: the shared batch is refused
        // (ENOENT), the filter's own batch succeeds, the forwards rebuild their table from the
        // journal — where this domain's hold still is until the commit: it is this change's to decide.
        fw.refuseParts = [:]
        fw.deleteTable_()
        let lines = CollectedDiagnostics()
        #expect(start(box, fw, lines: lines) == 0)
        #expect(fw.calls.contains { $0.hasPrefix("replaceAll") }, "\(fw.calls)")
        #expect(fw.elements == elements(47223).union(elements(47222)))
        #expect(try states(box) == [47222: .applied, 47223: .applied])
        #expect(try box.journal().holds().isEmpty)
    }

    @Test func aChangedListThatCannotBePutInTakesTheForwardOut() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        #expect(start(box, fw, lines: CollectedDiagnostics()) == 0)
        #expect(fw.elements.isSuperset(of: elements(47222)))
        // The list narrows; the kernel refuses: the old, wider list may still be in, so the forward goes.
        fw.failNextSend = EEXIST
        fw.refuseParts["inet src"] = EPERM
        let narrower = body.replacingOccurrences(of: "203.0.113.0/24", with: "203.0.113.7")
        #expect(QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, narrower),
                             resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics()) == 0)
        #expect(fw.elements.isDisjoint(with: elements(47222)))
        #expect(fw.elements.isSuperset(of: elements(47223)))
        #expect(try states(box) == [47222: .adding, 47223: .applied])
    }

    @Test func aSharedBatchRefusedForGoodTakesOutAnOpenForwardThatGetsAList() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        let open = body.replacingOccurrences(of: " source='203.0.113.0/24'", with: "")
        #expect(QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, open),
                             resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics()) == 0)
        #expect(fw.elements.isSuperset(of: elements(47222)))
        // The list arrives (the agent's or `add --source`'s re-apply); EPERM on the shared batch:
        // nothing of it applied, and the forward, open to all, must not stay so.
        fw.refuseParts["inet src"] = EPERM
        let lines = CollectedDiagnostics()
        #expect(start(box, fw, lines: lines) == 0)
        #expect(lines.lines.contains { $0.contains("nftables batch failed") })
        #expect(lines.lines.contains { $0.contains("domain 'web' forward tcp *:47222 not applied") })
        #expect(fw.elements == elements(47223))
        #expect(try states(box) == [47222: .adding, 47223: .applied])
        #expect(try box.journal().holds().map(\.key) == ["tcp|||47222"])
        // Reconcile completes it once the kernel takes the filter.
        fw.refuseParts = [:]
        let d = try DomainXML.parse(domain("web", uuidA, body))
        _ = try Reconciler(resources: .perProcess(box.config, kernel: fw), running: [d.uuid: RunningDomain(domain: d, uuid: d.uuid, name: d.name)],
                           diagnostics: CollectedDiagnostics()).run(dryRun: false, reason: "reconcile")
        #expect(fw.elements == elements(47223).union(elements(47222)))
        #expect(try states(box) == [47222: .applied, 47223: .applied])
    }

    @Test func aFailedChangeHoldsOnlyTheForwardsWhoseListItChanges() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        let two = body.replacingOccurrences(of: tcp(47223, to: 80),
                                            with: "<vp:portForward proto='tcp' guest='192.168.122.10' source='198.51.100.0/24'>"
                                                + "<vp:range start='47223' to='80'/></vp:portForward>")
        #expect(QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, two),
                             resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics()) == 0)
        #expect(fw.elements == elements(47222).union(elements(47223)))
        // 47222's list changes and cannot go in; 47223's filter, unchanged, is still in the kernel.
        fw.failNextSend = ENOENT
        fw.refuseParts["inet src"] = EPERM
        let changed = two.replacingOccurrences(of: "203.0.113.0/24", with: "203.0.113.7")
        #expect(QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, changed),
                             resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics()) == 0)
        #expect(fw.elements == elements(47223))
        #expect(try states(box) == [47222: .adding, 47223: .applied])
        #expect(try box.journal().holds().map(\.key) == ["tcp|||47222"])
        // Once a domain's filters are unconfirmed, the next failure holds every forward with a list.
        fw.failNextSend = ENOENT
        #expect(QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, changed),
                             resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics()) == 0)
        #expect(fw.elements.isEmpty)
        #expect(try box.journal().holds().map(\.key).sorted() == ["tcp|||47222", "tcp|||47223"])
    }

    @Test func healKeepsAHeldForwardOutThenCompletesIt() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        _ = try heldStart(box, fw)
        // Someone deletes the forwards' table: heal rebuilds it, still without the held forward.
        fw.deleteTable_()
        let lines = CollectedDiagnostics()
        #expect(throws: VirtPortError.self) { try Healer.heal(resources: .perProcess(box.config, kernel: fw), diagnostics: lines) }
        #expect(fw.elements == elements(47223))
        #expect(try box.journal().holds().count == 1)
        #expect(lines.lines.contains { $0.contains("forward tcp *:47222 not applied") })
        // The cause gone: the filter goes in, then the forward, applied.
        fw.refuseParts = [:]
        let healed = try Healer.heal(resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics())
        #expect(healed.contains { $0.hasPrefix("source filters:") }, "\(healed)")
        #expect(fw.elements == elements(47223).union(elements(47222)))
        #expect(try states(box) == [47222: .applied, 47223: .applied])
        #expect(try box.journal().holds().isEmpty)
        let srcIndex = fw.calls.lastIndex { $0.contains("inet src: rebuild") }
        let fwdIndex = fw.calls.lastIndex { $0.hasPrefix("apply +") }
        #expect(srcIndex != nil && fwdIndex != nil && srcIndex! < fwdIndex!, "the filter before the forward")
    }

    @Test func aHealWhoseFilterFailsTakesAnAppliedForwardOut() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        #expect(start(box, fw, lines: CollectedDiagnostics()) == 0)
        #expect(fw.elements.isSuperset(of: elements(47222)))
        // The filter's state is unknown (a crash left its row unconfirmed) and cannot be rebuilt.
        try box.journal().setSourceFilterState(domainUUID: uuidA, .adding)
        fw.refuseParts["inet src"] = EPERM
        #expect(throws: VirtPortError.self) {
            try Healer.heal(resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics())
        }
        #expect(fw.elements == elements(47223))
        #expect(try states(box) == [47222: .adding, 47223: .applied])
        #expect(try box.journal().holds().map(\.key) == ["tcp|||47222"])
    }

    @Test func networkStartedKeepsAHeldForwardOutThenCompletesIt() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        _ = try heldStart(box, fw)
        let xml = Array(Sandbox.defaultNetwork.utf8)
        #expect(NetworkWork.started(name: "default", input: xml, resources: .perProcess(box.config, kernel: fw),
                                    diagnostics: CollectedDiagnostics()) == 0)
        #expect(fw.calls.contains { $0.hasPrefix("replaceAll") })
        #expect(fw.elements == elements(47223))
        #expect(try box.journal().holds().count == 1)
        fw.refuseParts = [:]
        #expect(NetworkWork.started(name: "default", input: xml, resources: .perProcess(box.config, kernel: fw),
                                    diagnostics: CollectedDiagnostics()) == 0)
        #expect(fw.elements == elements(47223).union(elements(47222)))
        #expect(try states(box) == [47222: .applied, 47223: .applied])
        #expect(try box.journal().holds().isEmpty)
    }

    @Test func reconcileKeepsAHeldForwardOutThenCompletesIt() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        _ = try heldStart(box, fw)
        let d = try DomainXML.parse(domain("web", uuidA, body))
        let running = [d.uuid: RunningDomain(domain: d, uuid: d.uuid, name: d.name)]
        fw.elements = []  // and someone flushed the forwards: reconcile re-adds only the free one
        #expect(throws: VirtPortError.self) {
            try Reconciler(resources: .perProcess(box.config, kernel: fw), running: running,
                           diagnostics: CollectedDiagnostics()).run(dryRun: false, reason: "reconcile")
        }
        #expect(fw.elements == elements(47223))
        #expect(try states(box) == [47222: .adding, 47223: .applied])
        // The dry run (doctor's) says it is held, and why.
        let dry = try Reconciler(resources: .perProcess(box.config, kernel: fw), running: running,
                                 diagnostics: CollectedDiagnostics()).run(dryRun: true, reason: "doctor")
        #expect(dry.contains { $0.action == .skip && $0.what == "forward tcp *:47222 held" && $0.reason.contains("Operation not permitted") },
                "\(dry)")
        fw.refuseParts = [:]
        _ = try Reconciler(resources: .perProcess(box.config, kernel: fw), running: running,
                           diagnostics: CollectedDiagnostics()).run(dryRun: false, reason: "reconcile")
        #expect(fw.elements == elements(47223).union(elements(47222)))
        #expect(try states(box) == [47222: .applied, 47223: .applied])
        #expect(try box.journal().holds().isEmpty)
        // Idempotent.
        #expect(try Reconciler(resources: .perProcess(box.config, kernel: fw), running: running,
                               diagnostics: CollectedDiagnostics()).run(dryRun: false, reason: "reconcile").isEmpty)
    }

    @Test func aPendingForwardHeldFromTheStartIsNotCompletedByALeaseWithoutItsFilter() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = RecordingFirewall()
        // No guest= and no lease: pending, filtered from the start (the filter needs only the host side).
        let xml = domain("web", uuidA, "<vp:portForward proto='tcp' source='203.0.113.0/24'><vp:range start='47310' to='22'/></vp:portForward>")
        fw.refuseParts["inet src"] = EPERM
        let lines = CollectedDiagnostics()
        #expect(QemuWork.run(.start, domainName: "web", input: xml, resources: .perProcess(box.config, kernel: fw), diagnostics: lines) == 0)
        #expect(lines.lines.contains { $0.contains("domain 'web' forward tcp *:47310 not applied") }, "\(lines.lines)")
        #expect(try box.journal().holds().map(\.key) == ["tcp|||47310"])
        // dnsmasq writes the lease; the agent syncs the domain: the shared batch is refused for a
        // missing table, the filter's own batch refused too: the completed forward stays out.
        try FileManager.default.createDirectory(atPath: box.dir + "/state/dnsmasq", withIntermediateDirectories: true)
        try "[{\"ip-address\": \"192.168.122.77\", \"mac-address\": \"52:54:00:aa:bb:01\", \"expiry-time\": 0}]"
            .write(toFile: box.dir + "/state/dnsmasq/virbr0.status", atomically: true, encoding: .utf8)
        let d = try DomainXML.parse(xml)
        fw.failNextSend = ENOENT
        #expect(throws: VirtPortError.self) {
            try DomainSync.apply(d, reason: "agent: dhcp lease", resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics())
        }
        #expect(fw.elements.isEmpty)
        let rows = try box.journal().activeMappings()
        #expect(rows.map(\.state) == [.adding] && rows.first?.mapping.guestAddress == IPAddress("192.168.122.77"))
        #expect(try box.journal().holds().count == 1)
        // The cause gone, the next sync puts filter and forward in one batch.
        fw.refuseParts = [:]
        try DomainSync.apply(d, reason: "agent: dhcp lease", resources: .perProcess(box.config, kernel: fw), diagnostics: CollectedDiagnostics())
        #expect(fw.batches.last?.first == "inet src: rebuild with 1 filters")
        #expect(fw.elements.count == 1)
        #expect(try box.journal().activeMappings().map(\.state) == [.applied])
        #expect(try box.journal().holds().isEmpty)
    }

    @Test func aGuardingKindComesBeforeTheKindsItGuards() {
        let names = RuleKinds.all.map(\.name)
        for (i, kind) in RuleKinds.all.enumerated() {
            for guarded in kind.guards {
                let j = names.firstIndex(of: guarded)
                #expect(j != nil && j! > i, "\(kind.name) guards \(guarded)")
            }
        }
    }
}

extension RecordingFirewall {
    /// Someone deleted `table inet virtport`.
    func deleteTable_() {
        inetTable = false
        elements = []
        hairpin = []
    }
}
