import Foundation
import Testing
@testable import Agent
import Engine
import POSIX
import VirtPortCore

/// DHCP leases (README "Agent"): a status file replaced by rename is read, and a running domain
/// that owns a MAC whose lease appeared or moved is converged; a garbage file or a vanished lease
/// changes nothing. Real inotify on a temporary libvirt state directory; the running domains and
/// the convergence are fakes.
@Suite struct LeaseWatcherTests {
    static let mac = "52:54:00:aa:bb:01"
    static let uuid = "11111111-1111-4111-8111-111111111111"
    static let xml = """
        <domain type='qemu'><name>web</name><uuid>11111111-1111-4111-8111-111111111111</uuid>
        <metadata><vp:virtport xmlns:vp='urn:virtport:domain:1'><vp:portForward proto='tcp'><vp:range start='2222' to='22'/>
        </vp:portForward></vp:virtport></metadata><devices><interface type='network'><mac address='\(mac)'/>
        <source network='default'/></interface></devices></domain>
        """

    func writeLeases(_ dir: String, _ leases: [(mac: String, ip: String)]) throws {
        let body = leases.map {
            "{\"ip-address\": \"\($0.ip)\", \"mac-address\": \"\($0.mac)\", \"hostname\": \"vm\", \"expiry-time\": \(Int(Date().timeIntervalSince1970) + 3600)}"
        }
        try FileSystem.writeFileAtomically(dir + "/br0.status", Array("[\(body.joined(separator: ","))]".utf8), mode: 0o644)
    }

    @Test func aLeaseThatAppearsOrMovesConvergesItsDomainAndNothingElseDoes() throws {
        let f = try AgentFixture()
        defer { f.cleanup() }
        let dnsmasq = f.config.libvirtStateDir + "/dnsmasq"
        let domain = try DomainXML.parse(Array(Self.xml.utf8))
        let web = RunningDomain(domain: domain, uuid: "11111111-1111-4111-8111-111111111111", name: "web")
        let converged = Shared<[String]>([])
        let watcher = LeaseWatcher(running: { _ in [web.uuid: web] }, converge: { _, entry, reason, _ in
            converged.with { $0.append("\(entry.name): \(reason)") }
        })
        // libvirt's dnsmasq/ does not exist yet: the watcher waits for it on the state directory.
        try watcher.start(f.context)
        try FileSystem.makeDirectories(dnsmasq, mode: 0o755)
        try writeLeases(dnsmasq, [(Self.mac, "192.168.122.10")])
        #expect(eventually { converged.now.count == 1 })
        #expect(converged.now.first?.hasPrefix("web: agent: DHCP lease on br0, \(Self.mac) -> 192.168.122.10") == true)
        // The same leases again: nothing moved.
        try writeLeases(dnsmasq, [(Self.mac, "192.168.122.10")])
        usleep(100_000)
        #expect(converged.now.count == 1)
        // Another MAC (no running domain owns it): nothing; the lease moving: converged again.
        try writeLeases(dnsmasq, [(Self.mac, "192.168.122.10"), ("52:54:00:ff:ff:ff", "192.168.122.99")])
        usleep(100_000)
        #expect(converged.now.count == 1)
        try writeLeases(dnsmasq, [(Self.mac, "192.168.122.11")])
        #expect(eventually { converged.now.count == 2 })
        #expect(converged.now.last?.contains("-> 192.168.122.11") == true)
        // Garbage is ignored and what was seen stays the reference; the lease vanishing changes nothing.
        try FileSystem.writeFileAtomically(dnsmasq + "/br0.status", Array("[ {\"ip-address\": \"192.168".utf8), mode: 0o644)
        try writeLeases(dnsmasq, [(Self.mac, "192.168.122.11")])
        try writeLeases(dnsmasq, [])
        usleep(150_000)
        #expect(converged.now.count == 2)
    }
}
