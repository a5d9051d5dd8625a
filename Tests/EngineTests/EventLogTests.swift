import Foundation
import Testing
@testable import Engine
import Journal
import Netfilter
import VirtPortCore

/// Every decision reaches the system log, one line each, naming domain, protocol and ports: a
/// stand-in syslog socket receives what a hook process (here: QemuWork in-process) sends.
@Suite(.serialized) struct EventLogTests {
    @Test func appliedRemovedAndRefusedAreLoggedOneLineEach() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let syslog = try box.syslog()
        let lines = CollectedDiagnostics()
        let xml = domain("web", uuidA, tcp(47301, to: 22) + tcp(47302, to: 80))
        #expect(QemuWork.run(.start, domainName: "web", input: xml, resources: try box.resources(RecordingTransport()),
                             diagnostics: lines) == 0)
        let started = syslog.lines().filter { !$0.hasPrefix("healed:") }
        #expect(started == ["applied: domain 'web' tcp *:47301 -> 192.168.122.10:22 (hook qemu start)",
                            "applied: domain 'web' tcp *:47302 -> 192.168.122.10:80 (hook qemu start)"])
        // A second start (reconnect) changes nothing and logs nothing.
        #expect(QemuWork.run(.reconnect, domainName: "web", input: xml, resources: try box.resources(RecordingTransport()),
                             diagnostics: lines) == 0)
        #expect(syslog.lines().filter { !$0.hasPrefix("healed:") }.isEmpty)

        #expect(QemuWork.run(.stopped, domainName: "web", input: xml, resources: try box.resources(RecordingTransport()),
                             diagnostics: lines) == 0)
        #expect(syslog.lines() == ["removed: domain 'web' tcp *:47301 -> 192.168.122.10:22 (hook qemu stopped)",
                                   "removed: domain 'web' tcp *:47302 -> 192.168.122.10:80 (hook qemu stopped)"])

        // A refused start: the line libvirt shows, and the same in the log, at warning severity.
        let bad = domain("web", uuidA, tcp(22, to: 22))
        #expect(QemuWork.run(.prepare, domainName: "web", input: bad, resources: try box.resources(RecordingTransport()),
                             diagnostics: lines) == 2)
        let refused = syslog.messages()
        #expect(refused.count == 1)
        #expect(refused.first?.severity == 4)
        #expect(refused.first?.text == "refused: " + (lines.lines.last ?? "?"))
        #expect(refused.first?.text.contains("host port 22 is outside the allowed host ports") == true)
    }

    @Test func pendingThenCompletedByALease() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let syslog = try box.syslog()
        let lines = CollectedDiagnostics()
        let forward = "<vp:portForward proto='tcp'><vp:range start='47310' to='22'/></vp:portForward>"
        let xml = domain("web", uuidA, forward)
        #expect(QemuWork.run(.start, domainName: "web", input: xml, resources: try box.resources(RecordingTransport()),
                             diagnostics: lines) == 0)
        let pending = syslog.messages()
        #expect(pending.count == 1)
        #expect(pending.first?.severity == 4)
        #expect(pending.first?.text.hasPrefix("pending: domain 'web' tcp *:47310 -> (pending):22: NIC 52:54:00:aa:bb:01 on network default has no address yet") == true)

        // dnsmasq writes the lease; the domain is synced again (as the agent does on the lease event).
        try FileManager.default.createDirectory(atPath: box.dir + "/state/dnsmasq", withIntermediateDirectories: true)
        try "[{\"ip-address\": \"192.168.122.77\", \"mac-address\": \"52:54:00:aa:bb:01\", \"expiry-time\": 0}]"
            .write(toFile: box.dir + "/state/dnsmasq/virbr0.status", atomically: true, encoding: .utf8)
        let d = try DomainXML.parse(xml)
        try DomainSync.apply(d, reason: "agent: dhcp lease", resources: try box.resources(RecordingTransport()), diagnostics: lines)
        #expect(syslog.lines().filter { !$0.hasPrefix("healed:") }
                == ["completed: domain 'web' tcp *:47310 -> 192.168.122.77:22, guest address from dhcp-lease (agent: dhcp lease)"])
        // History: the pending mapping came and went, the completed one came, each with its reason.
        let events = try box.journal().history(HistoryFilter()).map { "\($0.action) \($0.mapping.guestSource.rawValue) \($0.reason)" }
        #expect(events == ["add pending hook qemu start", "add dhcp-lease agent: dhcp lease", "remove pending agent: dhcp lease"],
                "\(events)")
    }

    @Test func anEmptySocketPathLogsNothingAndAMissingDaemonIsNoError() {
        SystemLog.send(.warning, "nobody listens", socket: "")
        SystemLog.send(.warning, "nobody listens", socket: "/nonexistent/dir/log")
        let long = String(repeating: "x", count: 200)
        SystemLog.send(.warning, "path too long", socket: "/" + long)  // longer than sun_path: dropped, no crash
    }

    @Test func aLineBreakInADomainNameCannotForgeALogLine() throws {
        let box = Sandbox()
        defer { box.cleanup() }
        let syslog = try box.syslog()
        EventLog(config: box.config).refused("domain 'a\nrefused: forged' start: x")
        let got = syslog.lines()
        #expect(got.count == 1)
        #expect(got.first?.contains("\n") == false)
    }
}
