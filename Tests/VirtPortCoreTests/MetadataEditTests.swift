import Testing
@testable import VirtPortCore

/// `virtport add`/`remove`'s edits of the metadata element libvirt hands back (unqualified: libvirt
/// strips the namespace in virDomainGetMetadata) and what they write.
@Suite struct MetadataEditTests {
    let fromLibvirt = Array("""
        <virtport>
          <portForward proto="tcp" guest="192.168.122.10">
            <range start="2222" to="22"/>
            <range start="8000" end="8010"/>
          </portForward>
          <guard mac="52:54:00:aa:bb:01" spoofing="on"/>
        </virtport>
        """.utf8)

    @Test func addKeepsEverythingElseAndWritesOurNamespace() throws {
        var e = try MetadataEdit(fromLibvirt)
        let before = try e.metadata()
        e.add(try MetadataEdit.forward(proto: "udp", ports: "5000-5010:6000", address: "203.0.113.5", dev: nil,
                                       guest: nil, mac: "52:54:00:aa:bb:01"))
        let after = try e.metadata()
        #expect(after.forwards.dropLast() == before.forwards[...] && after.guards == before.guards)
        #expect(after.forwards.last == ForwardSpec(proto: .udp, address: IPAddress("203.0.113.5"), mac: MACAddress("52:54:00:aa:bb:01"),
                                                   ranges: [RangeSpec(ports: PortRange(5000, 5010), to: 6000)]))
        // What is written parses back (a hook reads it) to the same metadata.
        #expect(e.xml.hasPrefix("<virtport xmlns=\"urn:virtport:domain:1\">"))
        let domain = "<domain><name>d</name><uuid>11111111-1111-4111-8111-111111111111</uuid><metadata>\(e.xml)</metadata></domain>"
        #expect(try DomainXML.parse(Array(domain.utf8)).metadata == after)
    }

    @Test func removeDropsARangeAndExcludesAPortInsideOne() throws {
        var e = try MetadataEdit(fromLibvirt)
        #expect(try e.remove(proto: .tcp, port: 2222) == "host port tcp/2222 removed")
        #expect(try e.metadata().forwards[0].ranges == [RangeSpec(ports: PortRange(8000, 8010))])
        #expect(try e.remove(proto: .tcp, port: 8005) == "host port tcp/8005 excluded from range 8000-8010")
        #expect(try e.metadata().forwards[0].ranges.last == RangeSpec(ports: PortRange(8005, 8005), exclude: true))
        #expect(try e.remove(proto: .tcp, port: 8000) == "host ports tcp/8000-8010 removed")
        // The forward went with its last range; the guard stays.
        #expect(try e.metadata().forwards.isEmpty && e.metadata().guards.count == 1)
        #expect(throws: VirtPortError.self) { try e.remove(proto: .udp, port: 2222) }
        var only = try MetadataEdit(Array("<virtport><portForward proto='udp'><range start='53'/></portForward></virtport>".utf8))
        _ = try only.remove(proto: .udp, port: 53)
        #expect(only.isEmpty)
    }

    @Test func operandsAreCheckedStrictly() throws {
        func bad(_ proto: String, _ ports: String, address: String? = nil, dev: String? = nil) -> String {
            do {
                _ = try MetadataEdit.forward(proto: proto, ports: ports, address: address, dev: dev, guest: nil, mac: nil)
                return "accepted"
            } catch { return error.message }
        }
        #expect(bad("icmp", "22").contains("not tcp, udp or sctp"))
        #expect(bad("tcp", "0").contains("is not a port"))
        #expect(bad("tcp", "022").contains("is not a port"))
        #expect(bad("tcp", "70000").contains("is not a port"))
        #expect(bad("tcp", "9000-8000").contains("ends before it starts"))
        #expect(bad("tcp", "65000-65010:65530").contains("go past 65535"))
        #expect(bad("tcp", "80", address: "1.2.3").contains("--address"))
        #expect(bad("tcp", "80", dev: "a/b").contains("--dev"))
        #expect(try MetadataEdit.forward(proto: "tcp", ports: "8080", address: nil, dev: nil, guest: nil, mac: nil).ranges
            == [RangeSpec(ports: PortRange(8080, 8080))])
        #expect(throws: VirtPortError.self) { try MetadataEdit(Array("<other/>".utf8)) }
    }
}
