import Foundation
import Testing
@testable import VirtPortCore

@Suite struct MetadataTests {
    @Test func designExampleParses() throws {
        let d = try DomainXML.parse(domainXML(metadata: designExample))
        let m = try #require(d.metadata)
        #expect(m.forwards == [
            ForwardSpec(proto: .tcp, ranges: [
                RangeSpec(ports: PortRange(2222, 2222), to: 22),
                RangeSpec(ports: PortRange(8000, 8010)),
                RangeSpec(ports: PortRange(8005, 8005), exclude: true),
            ]),
            ForwardSpec(proto: .udp, address: ip("203.0.113.5"), mac: mac(mac1), guest: ip("192.168.122.10"),
                        ranges: [RangeSpec(ports: PortRange(5000, 5010), to: 6000)]),
        ])
        #expect(m.guards == [GuardSpec(mac: mac(mac1), spoofing: true, isolated: true)])
    }

    /// `virsh metadata --key x` re-prefixes: only the URI counts.
    @Test func anyPrefixWorks() throws {
        let xml = """
        <x:virtport xmlns:x="urn:virtport:domain:1">
          <x:portForward proto="tcp"><x:range start="8080" to="80"/></x:portForward>
        </x:virtport>
        """
        let m = try #require(try DomainXML.parse(domainXML(metadata: xml)).metadata)
        #expect(m.forwards == [ForwardSpec(proto: .tcp, ranges: [RangeSpec(ports: PortRange(8080, 8080), to: 80)])])
    }

    @Test func defaultNamespaceWorks() throws {
        let xml = """
        <virtport xmlns="urn:virtport:domain:1">
          <portForward proto="udp" dev="eth0"><range start="53"/></portForward>
          <guard spoofing="off"/>
        </virtport>
        """
        let m = try #require(try DomainXML.parse(domainXML(metadata: xml)).metadata)
        #expect(m.forwards == [ForwardSpec(proto: .udp, dev: "eth0", ranges: [RangeSpec(ports: PortRange(53, 53))])])
        #expect(m.guards == [GuardSpec(mac: nil, spoofing: false, isolated: false)])
    }

    /// The namespace may be declared further up (on <metadata> or even <domain>).
    @Test func namespaceDeclaredOnAncestor() throws {
        let bytes = Array("""
        <domain xmlns:q="urn:virtport:domain:1"><name>a</name><uuid>u</uuid>
          <metadata><q:virtport><q:portForward proto="tcp"><q:range start="2000"/></q:portForward></q:virtport></metadata>
        </domain>
        """.utf8)
        #expect(try DomainXML.parse(bytes).metadata?.forwards.count == 1)
    }

    /// Our usual prefix bound to another URI is someone else's element.
    @Test func samePrefixOtherNamespaceIsIgnored() throws {
        let xml = """
        <vp:virtport xmlns:vp="urn:virtport:domain:2"><vp:bogus/></vp:virtport>
        <virtport><portForward proto="icmp"/></virtport>
        <app:settings xmlns:app="http://example.org/app"><app:x/></app:settings>
        """
        let bytes = domainXML(metadata: xml)
        #expect(!DomainXML.mentionsVirtPort(bytes))
        #expect(try DomainXML.parse(bytes).metadata == nil)
    }

    @Test func foreignElementsAndAttributesInsideOursAreIgnored() throws {
        let xml = """
        <vp:virtport xmlns:vp="urn:virtport:domain:1" xmlns:o="urn:other">
          <o:note>hello</o:note>
          <vp:portForward proto="tcp" o:comment="web">
            <o:extra/>
            <vp:range start="8443" to="443" o:why="tls"/>
          </vp:portForward>
        </vp:virtport>
        """
        let m = try #require(try DomainXML.parse(domainXML(metadata: xml)).metadata)
        #expect(m.forwards == [ForwardSpec(proto: .tcp, ranges: [RangeSpec(ports: PortRange(8443, 8443), to: 443)])])
    }

    @Test func emptyVirtportIsEmptyMetadata() throws {
        let d = try DomainXML.parse(domainXML(metadata: "<virtport xmlns='urn:virtport:domain:1'/>"))
        #expect(d.metadata == VirtPortMetadata())
        #expect(try Planner.plan(domain: d, resolver: NoGuestAddresses(), policy: Policy()).mappings.isEmpty)
    }

    @Test func metadataInsideStatusFile() throws {
        var text = String(decoding: try Fixture.bytes("run-libvirt-qemu-status-lvprobe1.xml"), as: UTF8.self)
        text = text.replacingOccurrences(
            of: "    <on_poweroff>",
            with: "    <metadata>\(virtport("<vp:portForward proto='tcp'><vp:range start='2222' to='22'/></vp:portForward>"))</metadata>\n    <on_poweroff>")
        let bytes = Array(text.utf8)
        #expect(DomainXML.mentionsVirtPort(bytes))
        let d = try DomainXML.parse(bytes)
        let p = try Planner.plan(domain: d, resolver: NoGuestAddresses(), policy: Policy())
        #expect(summary(p) == ["tcp *:2222 -> ?:22 (pending)"])
    }

    @Test func mentionsVirtPort() {
        #expect(DomainXML.mentionsVirtPort(domainXML(metadata: virtport(""))))
        #expect(!DomainXML.mentionsVirtPort(domainXML(metadata: nil)))
        #expect(!DomainXML.mentionsVirtPort([]))
        #expect(DomainXML.mentionsVirtPort(Array("urn:virtport:domain:1".utf8)))
        #expect(!DomainXML.mentionsVirtPort(Array("urn:virtport:domain:".utf8)))
    }

    @Test func entitiesAndCharacterReferencesInValues() throws {
        let bytes = Array("""
        <domain><name>a&amp;b&#x41;</name><uuid>u</uuid>
        <metadata><virtport xmlns="urn:virtport:domain:1"><portForward proto="t&#99;p"><range start="&#56;0&#56;0"/></portForward></virtport></metadata>
        </domain>
        """.utf8)
        let d = try DomainXML.parse(bytes)
        #expect(d.name == "a&bA")
        #expect(d.metadata?.forwards.first?.proto == .tcp)
        #expect(d.metadata?.forwards.first?.ranges.first?.ports == PortRange(8080, 8080))
    }
}

let designExample = """
<vp:virtport xmlns:vp="urn:virtport:domain:1">
  <vp:portForward proto="tcp">                       <!-- all host addresses -->
    <vp:range start="2222" to="22"/>                 <!-- host 2222 -> guest 22 -->
    <vp:range start="8000" end="8010"/>              <!-- host 8000-8010 -> guest 8000-8010 -->
    <vp:range start="8005" exclude="yes"/>
  </vp:portForward>
  <vp:portForward proto="udp" address="203.0.113.5" mac="52:54:00:aa:bb:01" guest="192.168.122.10">
    <vp:range start="5000" end="5010" to="6000"/>    <!-- host 5000-5010 -> guest 6000-6010 -->
  </vp:portForward>
  <vp:guard mac="52:54:00:aa:bb:01" spoofing="on" isolated="yes"/>
</vp:virtport>
"""
