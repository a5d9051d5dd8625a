import Foundation
import Testing
@testable import VirtPortCore

/// Fixtures captured from libvirt 9.0 hooks (first line: a comment with the argv).
enum Fixture {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/libvirt-9.0")

    /// The file's bytes. network-stopped.xml is a raw capture log framed by `===` lines, which
    /// are not XML; they are dropped here (the hook itself only ever sees the XML).
    static func bytes(_ name: String) throws -> [UInt8] {
        let text = try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("===") }
        return Array(lines.joined(separator: "\n").utf8)
    }
}

let mac1 = "52:54:00:aa:bb:01"
let mac2 = "52:54:00:aa:bb:02"
let nic1 = """
    <interface type='network'>
      <mac address='\(mac1)'/>
      <source network='default' portid='f5ed157d-06d2-412c-b9d8-8371cb836434' bridge='virbr0'/>
      <target dev='vnet5'/>
      <model type='virtio'/>
    </interface>
"""
let nic2 = """
    <interface type='bridge'>
      <mac address='\(mac2)'/>
      <source bridge='br0'/>
      <target dev='vnet6'/>
    </interface>
"""

/// A domain with the given NICs and, when `metadata` is non-nil, a `<metadata>` holding it.
func domainXML(metadata: String?, interfaces: String = nic1) -> [UInt8] {
    let meta = metadata.map { "  <metadata>\n\($0)\n  </metadata>\n" } ?? ""
    return Array("""
    <domain type='kvm'>
      <name>web1</name>
      <uuid>10ca34a4-d7de-462e-8906-be833e7f6cae</uuid>
    \(meta)  <devices>
    \(interfaces)
      </devices>
    </domain>
    """.utf8)
}

/// `<vp:virtport>` around `body`.
func virtport(_ body: String) -> String {
    "<vp:virtport xmlns:vp='urn:virtport:domain:1'>\n\(body)\n</vp:virtport>"
}

/// libvirt's `default` network as the tests' domains see it.
let defaultNetwork = NetworkDefinition(
    name: "default", uuid: "", bridge: "virbr0", forwardMode: "nat",
    ips: [NetworkIP(address: ip("192.168.122.1"), prefix: 24), NetworkIP(address: ip("fd00:122::1"), prefix: 64)])

/// The host addresses the tests' `address=` values name.
let testHostAddresses = ["127.0.0.1", "::1", "203.0.113.5", "192.0.2.1", "192.0.2.2", "198.51.100.7", "2001:db8::5",
                         "192.168.122.1", "fd00:122::1"].map(ip)

/// A resolver with canned answers, recording what it was asked (reservations and leases only).
final class FakeResolver: GuestAddressResolver, @unchecked Sendable {
    var reservations: [String: IPAddress] = [:]  // "network mac" → ip
    var leases: [String: IPAddress] = [:]
    var asked: [String] = []
    var networks: [String: NetworkDefinition] = ["default": defaultNetwork]
    var local: [IPAddress]? = testHostAddresses
    var leaseHoldersByAddress: [IPAddress: [MACAddress]] = [:]
    var holders: [IPAddress: String] = [:]
    var routers: [String: [IPAddress]] = [:]

    func addressHolder(_ address: IPAddress, except mac: MACAddress) -> String? { holders[address] }
    func gateways(interface name: String) -> [IPAddress] { routers[name] ?? [] }

    func network(named name: String) -> NetworkDefinition? { networks[name] }
    func localAddresses() -> [IPAddress]? { local }
    func leaseHolders(network name: String, address: IPAddress) -> [MACAddress] { leaseHoldersByAddress[address] ?? [] }

    func reservation(network: String, mac: MACAddress, family: Family?) -> IPAddress? {
        asked.append("reservation \(network) \(mac) \(family.map(\.rawValue) ?? "any")")
        return reservations["\(network) \(mac)"]
    }

    func lease(network: String, mac: MACAddress, family: Family?) -> IPAddress? {
        asked.append("lease \(network) \(mac) \(family.map(\.rawValue) ?? "any")")
        return leases["\(network) \(mac)"]
    }
}

func plan(_ metadata: String, interfaces: String = nic1, policy: Policy = Policy(),
          resolver: some GuestAddressResolver = FakeResolver()) throws -> Plan {
    let domain = try DomainXML.parse(domainXML(metadata: metadata, interfaces: interfaces))
    return try Planner.plan(domain: domain, resolver: resolver, policy: policy)
}

/// Compact text of mappings for readable assertions: "tcp *:2222 -> 192.168.122.10:22 (guest-attribute)".
func summary(_ p: Plan) -> [String] {
    p.mappings.map { m in
        let host = (m.hostAddress?.description ?? "*") + (m.dev.map { "%\($0)" } ?? "")
        let guest = m.guestAddress?.description ?? "?"
        return "\(m.proto.rawValue) \(host):\(m.hostPorts) -> \(guest):\(m.guestPorts) (\(m.guestSource.rawValue))"
    }
}

func ip(_ s: String) -> IPAddress { IPAddress(s)! }
func mac(_ s: String) -> MACAddress { MACAddress(s)! }
