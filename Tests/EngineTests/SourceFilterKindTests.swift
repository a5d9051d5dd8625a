import Foundation
import Testing
@testable import Engine
import Journal
import Netfilter
import VirtPortCore

/// `source=` as a rule kind (`SourceFilterKind`) through the recording firewall: it joins the
/// domain's one lock, one intents transaction and one netlink batch, and recovers alone.
@Suite struct SourceFilterKindTests {
    let filtered = "<vp:portForward proto='tcp' guest='192.168.122.10' source='203.0.113.0/24 2001:db8::/32'>"
        + "<vp:range start='47222' to='22'/></vp:portForward><vp:guard ip='192.168.122.10' isolated='yes'/>"

    func firewall() -> RecordingFirewall {
        let fw = RecordingFirewall()
        fw.isolatedFlags["vnet5"] = false
        fw.masks["vnet5"] = 0
        return fw
    }

    @Test func aFilteredGuardedStartIsOneLockOneBatchTwoTransactions() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        let lines = CollectedDiagnostics()
        let resources = Resources.perProcess(box.config, kernel: fw)
        let opened = try resources.journal().transactionsBegun
        try DomainSync.apply(try DomainXML.parse(domain("web", uuidA, filtered)), reason: "test", resources: resources,
                             diagnostics: lines)
        #expect(lines.lines.isEmpty)
        // The first filter creates the table; forwards and guards in the same batch.
        #expect(fw.batches == [["inet src: rebuild with 1 filters", "inet +1 -0", "bridge +1 -0"]])
        #expect(try resources.changeLock().acquisitions == 1)
        #expect(try resources.journal().transactionsBegun - opened == 2)
        let db = try box.journal()
        #expect(try db.sourceFilters().map(\.state) == [.applied])
        #expect(try db.sourceFilters().first?.filter.text == "203.0.113.0/24 2001:db8::/32")

        // Another list: only the change; the same list again: nothing for this kind.
        let changed = filtered.replacingOccurrences(of: "203.0.113.0/24 2001:db8::/32", with: "198.51.100.0/24")
        try DomainSync.apply(try DomainXML.parse(domain("web", uuidA, changed)), reason: "test", resources: resources,
                             diagnostics: lines)
        #expect(fw.batches.last?.first == "inet src: 1 -> 1 filters")
        try DomainSync.apply(try DomainXML.parse(domain("web", uuidA, changed)), reason: "test", resources: resources,
                             diagnostics: lines)
        #expect(fw.batches.last?.contains { $0.hasPrefix("inet src") } == false)
        #expect(try db.sourceFilterHistory().map(\.action) == ["on", "change"])
    }

    @Test func theLastFilterTakesTheTableAndAnUnfilteredStartCostsNothing() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        let resources = Resources.perProcess(box.config, kernel: fw)
        let lines = CollectedDiagnostics()
        try DomainSync.apply(try DomainXML.parse(domain("web", uuidA, filtered)), reason: "test", resources: resources,
                             diagnostics: lines)
        try DomainSync.remove(uuid: uuidA, reason: "test", resources: resources, diagnostics: lines)
        #expect(fw.batches.last?.first == "inet src: delete table")
        #expect(try box.journal().sourceFilters().isEmpty)
        // A domain without source= sends nothing for this kind.
        try DomainSync.apply(try DomainXML.parse(domain("db", uuidB, tcp(47223, to: 22))), reason: "test",
                             resources: resources, diagnostics: lines)
        #expect(fw.batches.last == ["inet +1 -0"])
    }

    @Test func aRefusedSharedBatchRebuildsTheTableFromTheJournal() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fw = firewall()
        fw.failNextSend = ENOENT
        let resources = Resources.perProcess(box.config, kernel: fw)
        let lines = CollectedDiagnostics()
        try DomainSync.apply(try DomainXML.parse(domain("web", uuidA, filtered)), reason: "test", resources: resources,
                             diagnostics: lines)
        // Its own batch first (before the forwards' DNAT), with what the journal holds.
        let own = fw.calls.filter { $0.hasPrefix("send") }
        #expect(own.count >= 2)
        #expect(own[1] == "send [\"inet src: rebuild with 1 filters\"]")
        #expect(try box.journal().sourceFilters().map(\.state) == [.applied])
    }

    /// The filters whose open connections a change checks: a list given to a forward, or one that
    /// lost (or changed) a prefix; not one that only gained prefixes, nor one that went.
    @Test func aChangeCutsOnlyForFiltersThatNarrowed() {
        func f(_ port: UInt16, _ prefixes: String...) -> SourceFilter {
            SourceFilter(proto: .tcp, hostAddress: nil, dev: nil, ports: PortRange(port, port),
                         prefixes: prefixes.map { IPPrefix(parsing: $0)! })
        }
        let before = [f(22, "10.0.0.0/8", "192.0.2.0/24"), f(80, "10.0.0.0/8"), f(443, "10.0.0.0/8"), f(8080, "10.0.0.0/8")]
        let after = [f(22, "10.0.0.0/8"), f(80, "10.0.0.0/8", "192.0.2.0/24"), f(443, "10.0.0.0/8"), f(3389, "10.0.0.0/8")]
        let change = SourceFilterChange(domain: DomainRef(name: "web", uuid: uuidA), reason: "test", before: before, after: after,
                                        part: nil)
        #expect(change.narrowed.map(\.ports.start) == [22, 3389])
    }

    /// Only a list on a forward the kernel already held looks for open connections to cut
    /// (`SourceFilterChange.cut`): a start of new forwards reads nothing more.
    @Test func onlyAListOnAnAppliedForwardLooksForConnectionsToCut() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let resources = Resources.perProcess(box.config, kernel: firewall())
        let lines = CollectedDiagnostics()
        let context = KindContext(resources: resources, diagnostics: lines)
        let db = try resources.journal()
        func cut(_ forwards: String) throws -> [UInt16] {
            let plan = try Planner.plan(domain: try DomainXML.parse(domain("web", uuidA, forwards)), resolver: context.files,
                                        policy: context.config.policy)
            var staged: (any StagedChange)?
            try db.transaction { () throws(VirtPortError) in
                staged = try SourceFilterKind().stage(plan, domain: DomainRef(name: "web", uuid: uuidA), reason: "test",
                                                      db: db, context: context)
            }
            return (staged as? SourceFilterChange)?.cut.map(\.ports.start) ?? []
        }
        let open = tcp(47222, to: 22)
        let listed = open.replacingOccurrences(of: "proto='tcp'", with: "proto='tcp' source='203.0.113.0/24'")
        #expect(listed != open)
        #expect(try cut(listed) == [])  // a first start: the forward was not in the kernel
        try DomainSync.apply(try DomainXML.parse(domain("web", uuidA, open)), reason: "test", resources: resources,
                             diagnostics: lines)
        #expect(try cut(listed) == [47222])  // the applied forward gets a list: its connections are checked
    }

    @Test func reconcilePlansFromTheJournalAndTheRunningDomains() throws {
        let rows = [SourceFilterRow(domain: DomainRef(name: "gone", uuid: "u1"),
                                    filter: SourceFilter(proto: .tcp, hostAddress: nil, dev: nil, ports: PortRange(22, 22),
                                                         prefixes: [IPPrefix(IPAddress("10.0.0.0")!, prefix: 8)]),
                                    state: .applied)]
        let p = SourceFilterReconcile.make(rows: rows, wanted: [:], damage: nil, table: "virtport_src", reason: "reconcile")
        #expect(p.fixes.map(\.action) == [.removeMapping])
        #expect(p.rebuild)
        let q = SourceFilterReconcile.make(rows: rows, wanted: ["u1": (rows[0].domain, [rows[0].filter])],
                                           damage: "table inet virtport_src is missing", table: "virtport_src", reason: "reconcile")
        #expect(q.fixes.map(\.action) == [.rebuildTable])
    }
}
