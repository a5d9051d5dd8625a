import Foundation
import Testing
@testable import Engine
import Journal
import Netfilter
import VirtPortCore

/// The engine's one entry point for a qemu op, with a temporary journal and a recording netlink
/// transport: what it journals, what it sends, the line it reports and the exit status it picks.
@Suite struct QemuWorkTests {
    @Test func startJournalsAndSendsElementsThenStopRemovesThem() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fake = RecordingTransport()
        let lines = CollectedDiagnostics()
        let xml = domain("web", uuidA, tcp(47222, to: 22))
        let code = QemuWork.run(.start, domainName: "web", input: xml, resources: try box.resources(fake), diagnostics: lines)
        #expect(code == 0, "\(lines.lines)")
        #expect(lines.lines.isEmpty)
        let db = try box.journal()
        let rows = try db.activeMappings()
        #expect(rows.map(\.state) == [.applied])
        #expect(rows.first?.mapping.hostPorts.start == 47222)
        #expect(try db.history(HistoryFilter()).map(\.reason) == ["hook qemu start"])
        // The element went out; a kernel that lists no rules looks flushed, so the table was rebuilt.
        let types = fake.sentMessageTypes
        #expect(types.contains(Msg.newSetElem))
        #expect(types.contains(Msg.getRule))
        #expect(types.contains(Msg.delTable))

        let stop = RecordingTransport()
        #expect(QemuWork.run(.stopped, domainName: "web", input: xml, resources: try box.resources(stop), diagnostics: lines) == 0)
        #expect(try db.activeMappings().isEmpty)
        #expect(try db.history(HistoryFilter()).map(\.action) == [.add, .remove])
        #expect(stop.sentMessageTypes.contains(Msg.delSetElem))
        // A second stop (libvirt's release) is a no-op: nothing is sent.
        let again = RecordingTransport()
        #expect(QemuWork.run(.release, domainName: "web", input: xml, resources: try box.resources(again), diagnostics: lines) == 0)
        #expect(again.sent.isEmpty)
    }

    @Test func invalidMetadataIsOneLineExitTwoAndNothingHappens() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let fake = RecordingTransport()
        let lines = CollectedDiagnostics()
        let xml = domain("web", uuidA, tcp(70000, to: 22))
        for op in [QemuOperation.prepare, .start] {
            #expect(QemuWork.run(op, domainName: "web", input: xml, resources: try box.resources(fake), diagnostics: lines) == 2)
        }
        #expect(lines.lines.count == 2)
        #expect(lines.lines.allSatisfy { $0.hasPrefix("domain 'web' ") && $0.contains("start=\"70000\"") })
        #expect(fake.sent.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: box.config.databasePath))
        // reconnect never fails, even on invalid input.
        #expect(QemuWork.run(.reconnect, domainName: "web", input: xml, resources: try box.resources(fake), diagnostics: lines) == 0)
        #expect(lines.lines.last?.contains("reconnect never fails") == true)
    }

    @Test func kernelFailureFollowsThePolicy() throws {
        for refuse in [false, true] {
            let box = Sandbox { $0.onInternalError = refuse ? .refuse : .warn }
            defer { box.cleanup() }
            let fake = RecordingTransport()
            fake.errors[101] = (EPERM, nil)  // the batch's first element
            let lines = CollectedDiagnostics()
            let code = QemuWork.run(.start, domainName: "web", input: domain("web", uuidA, tcp(47223, to: 22)),
                                    resources: try box.resources(fake), diagnostics: lines)
            #expect(code == (refuse ? 1 : 0))
            #expect(lines.lines.count == 1)
            #expect(lines.lines[0].contains("nftables batch failed"))
            #expect(lines.lines[0].contains("VM start continues") == !refuse)
            // The intent stays for reconcile to finish: journal says `adding`, no history yet.
            let db = try box.journal()
            #expect(try db.activeMappings().map(\.state) == [.adding])
            #expect(try db.history(HistoryFilter()).isEmpty)
        }
    }

    @Test func prepareRefusesAPortAnotherDomainHolds() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let lines = CollectedDiagnostics()
        #expect(QemuWork.run(.start, domainName: "a", input: domain("a", uuidA, tcp(47224, to: 22)),
                             resources: try box.resources(RecordingTransport()), diagnostics: lines) == 0)
        let fake = RecordingTransport()
        let code = QemuWork.run(.prepare, domainName: "b", input: domain("b", uuidB, tcp(47224, to: 80, guest: "192.168.122.11")),
                                resources: try box.resources(fake), diagnostics: lines)
        #expect(code == 2)
        #expect(lines.lines.count == 1)
        #expect(lines.lines[0].hasPrefix("domain 'b' prepare: "))
        #expect(lines.lines[0].contains("'a'"))
        #expect(fake.sent.isEmpty)  // prepare is read-only
    }

    /// `virtport plan`'s `refused`: prepare's own check, read-only; the top line is exactly the line
    /// prepare prints, and each forward says whether it alone is refused.
    @Test func planRefusalsArePreparesLinePerForward() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let lines = CollectedDiagnostics()
        #expect(QemuWork.run(.start, domainName: "a", input: domain("a", uuidA, tcp(47227, to: 22)),
                             resources: try box.resources(RecordingTransport()), diagnostics: lines) == 0)
        let xml = domain("b", uuidB, tcp(47228, to: 80, guest: "192.168.122.11") + tcp(47227, to: 81, guest: "192.168.122.11"))
        let fake = RecordingTransport()
        let resources = try box.resources(fake)
        let plan = try DomainSync.plan(try DomainXML.parse(xml), resources: resources, diagnostics: lines)
        let refusals = DomainSync.refusals(plan, resources: resources, diagnostics: lines)
        #expect(QemuWork.run(.prepare, domainName: "b", input: xml, resources: resources, diagnostics: lines) == 2)
        #expect(lines.lines.count == 1)
        #expect(refusals.line == lines.lines.last)
        #expect(refusals.perMapping.count == 2)
        // In the plan's order (by host port), as `forwards` lists them.
        #expect(plan.mappings.map(\.hostPorts.start) == [47227, 47228])
        #expect(refusals.perMapping[1] == nil)
        #expect(refusals.perMapping[0] == "host port tcp/47227 is already forwarded to domain 'a' (uuid \(uuidA))")
        #expect(fake.sent.isEmpty)
        // Nothing refused: a itself (its own rows do not count), and b once a has stopped.
        let own = try DomainSync.plan(try DomainXML.parse(domain("a", uuidA, tcp(47227, to: 22))), resources: resources, diagnostics: lines)
        #expect(DomainSync.refusals(own, resources: resources, diagnostics: lines) == Refusals(line: nil, perMapping: [nil]))
        #expect(QemuWork.run(.stopped, domainName: "a", input: domain("a", uuidA, tcp(47227, to: 22)),
                             resources: try box.resources(RecordingTransport()), diagnostics: lines) == 0)
        #expect(DomainSync.refusals(plan, resources: resources, diagnostics: lines) == Refusals(line: nil, perMapping: [nil, nil]))
        #expect(lines.lines.count == 1)
    }

    @Test func teardownWithoutUUIDIsInvalidAndInternalTroubleFailsIt() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let lines = CollectedDiagnostics()
        let code = QemuWork.run(.stopped, domainName: "x", input: Array("<domain><name>x</name></domain>".utf8),
                                resources: try box.resources(RecordingTransport()), diagnostics: lines)
        #expect(code == 2)
        #expect(lines.lines == ["domain 'x' stopped: domain XML on stdin has no <uuid>"])
        // At teardown, internal trouble is exit 1 whatever the policy (libvirt only logs it).
        let e = VirtPortError.operational("database x: cannot open")
        #expect(QemuWork.report(e, op: "stopped", domain: "x", policy: Policy(), diagnostics: lines,
                                  log: EventLog(socket: "")) == 1)
        #expect(QemuWork.report(e, op: "start", domain: "x", policy: Policy(), diagnostics: lines,
                                  log: EventLog(socket: "")) == 0)
    }
}
