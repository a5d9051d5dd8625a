import Testing
@testable import Engine
import Journal
import Netfilter
import VirtPortCore

/// Reconcile's decisions as a pure function of the journal's rows, the running domains and the
/// kernel's state.
@Suite final class ReconcilePlanTests {
    static let a = DomainRef(name: "a", uuid: uuidA)
    static let b = DomainRef(name: "b", uuid: uuidB)

    let box = Sandbox()
    deinit { box.cleanup() }

    func mappings(_ xml: [UInt8]) throws -> [Mapping] {
        try Planner.plan(domain: try DomainXML.parse(xml), resolver: box.resolver, policy: Policy()).mappings
    }

    func row(_ id: Int64, _ d: DomainRef, _ m: Mapping, _ state: MappingState = .applied) -> ActiveMapping {
        ActiveMapping(id: id, domain: d, mapping: m, state: state, since: 1)
    }

    func make(rows: [ActiveMapping], running: [String: RunningDomain], kernel: KernelState) -> ReconcilePlan {
        let resolver = box.resolver
        return ReconcilePlan.make(rows: rows, running: running, kernel: kernel, table: "virtport", reason: "reconcile") {
            (d) throws(VirtPortError) -> [Mapping] in
            try Planner.plan(domain: d, resolver: resolver, policy: Policy()).mappings
        }
    }

    @Test func agreeingStateNeedsNothing() throws {
        let xml = domain("a", uuidA, tcp(2222, to: 22))
        let m = try mappings(xml)
        let plan = make(rows: m.enumerated().map { row(Int64($0.offset), Self.a, $0.element) },
                        running: [uuidA: RunningDomain(domain: try DomainXML.parse(xml), uuid: uuidA, name: "a")],
                        kernel: KernelState(elements: Set(m.flatMap(\.elements))))
        #expect(plan.fixes.isEmpty)
        #expect(plan.kernelAdd.isEmpty && plan.kernelDelete.isEmpty && !plan.rebuildTable)
        #expect(plan.target == Set(m.flatMap(\.elements)))
    }

    @Test func stoppedDomainsGoRunningOnesComeAndTheKernelFollows() throws {
        let xa = domain("a", uuidA, tcp(2222, to: 22)), xb = domain("b", uuidB, tcp(8080, to: 80, guest: "192.168.122.11"))
        let ma = try mappings(xa), mb = try mappings(xb)
        // Journal: a (not running). Running: b (not journalled). Kernel: a's elements and an orphan.
        let orphan = try mappings(domain("o", uuidA, tcp(9999, to: 99)))[0].elements[0]
        let plan = make(rows: [row(1, Self.a, ma[0])],
                        running: [uuidB: RunningDomain(domain: try DomainXML.parse(xb), uuid: uuidB, name: "b")],
                        kernel: KernelState(elements: Set(ma[0].elements + [orphan])))
        let actions = plan.fixes.map { "\($0.action.rawValue) \($0.domain ?? "-")" }
        #expect(actions.contains("remove-mapping a"))
        #expect(actions.contains("add-mapping b"))
        #expect(actions.contains("kernel-add -"))  // owners are named from the journal, where b is not yet
        #expect(actions.contains("kernel-delete -") || actions.contains("kernel-delete a"))
        #expect(plan.desired[uuidA]?.mappings == [])
        #expect(plan.desired[uuidB]?.mappings == mb)
        #expect(plan.target == Set(mb.flatMap(\.elements)))
        #expect(plan.kernelDelete == Set(ma[0].elements + [orphan]))
        #expect(plan.fixes.first { $0.domain == "a" }?.reason == "reconcile: domain not running")
        // libvirt's accept rule is checked for the networks of what stays: b's, not a's.
        #expect(plan.kept == mb)
    }

    @Test func damagedOrMissingTableIsRebuiltNotPatched() throws {
        let xa = domain("a", uuidA, tcp(2222, to: 22))
        let ma = try mappings(xa)
        let running = [uuidA: RunningDomain(domain: try DomainXML.parse(xa), uuid: uuidA, name: "a")]
        let rows = [row(1, Self.a, ma[0])]
        for kernel in [KernelState(skeletonIntact: false), KernelState(tableMissing: true), KernelState(readError: "EIO")] {
            let plan = make(rows: rows, running: running, kernel: kernel)
            #expect(plan.rebuildTable)
            #expect(plan.fixes.map(\.action) == [.rebuildTable])
        }
        // Nothing belongs in the kernel: a missing table stays missing.
        let none = make(rows: [], running: [:], kernel: KernelState(tableMissing: true))
        #expect(!none.rebuildTable && none.fixes.isEmpty)
    }

    @Test func invalidMetadataOrUnreadableXMLLeavesTheRowsAlone() throws {
        let good = domain("a", uuidA, tcp(2222, to: 22))
        let m = try mappings(good)
        let rows = [row(1, Self.a, m[0])]
        let bad = RunningDomain(domain: try DomainXML.parse(domain("a", uuidA, tcp(2222, to: 22))), uuid: uuidA, name: "a")
        var broken = bad
        broken.domain = nil
        broken.problem = "not XML"
        let plan = make(rows: rows, running: [uuidA: broken], kernel: KernelState(elements: Set(m[0].elements)))
        #expect(plan.fixes.map(\.action) == [.skip])
        #expect(plan.fixes[0].reason == "not XML")
        #expect(plan.desired[uuidA] == nil)
        #expect(plan.target == Set(m[0].elements))  // kept in the kernel
        #expect(plan.kernelDelete.isEmpty)
    }

    @Test func halfAddedRowsAreFinished() throws {
        let xa = domain("a", uuidA, tcp(2222, to: 22))
        let m = try mappings(xa)
        let plan = make(rows: [row(1, Self.a, m[0], .adding)],
                        running: [uuidA: RunningDomain(domain: try DomainXML.parse(xa), uuid: uuidA, name: "a")],
                        kernel: KernelState())
        #expect(plan.fixes.map(\.action) == [.addMapping, .kernelAdd])
    }
}
