import Testing
import Foundation
@testable import VirtPortCore

/// Issue 11: validation against a hostile domain editor, escaping, bounded work.
@Suite struct SecurityTests {
    @Test func quotedIsOneLineEscapedAndShort() {
        #expect(Quoted.message("1\nvirtport: domain OK") == "1\\nvirtport: domain OK")
        #expect(Quoted.message("a\u{1b}[2J\r\t\\b\u{85}\u{2028}") == "a\\x1b[2J\\r\\t\\\\b\\u{85}\\u{2028}")
        let long = Quoted.message(String(repeating: "9", count: 3_000_000))
        #expect(long == String(repeating: "9", count: Quoted.messageLimit) + "…(3000000 bytes)")
        #expect(Quoted.cell("web\nFAKE\\x") == "web\\nFAKE\\x")  // cells keep backslashes
        #expect(Quoted.cell("plain") == "plain")
    }

    @Test func interfaceNamesNftCanReadBack() {
        for ok in ["eth0", "br-lan", "vlan.10", "virbr0_nic", "a", String(repeating: "x", count: 15)] {
            #expect(MetadataXML.isInterfaceName(ok), "\(ok)")
        }
        for bad in ["a\"b", "h*", "a b", "a/b", "a:b", "a\\b", "é", ".", "..", "", String(repeating: "x", count: 16), "a\u{7f}"] {
            #expect(!MetadataXML.isInterfaceName(bad), "\(bad)")
        }
    }

    @Test func unspecifiedLikeAndMappedAddressesAreRefused() {
        for (text, fragment) in [("0.1.2.3", "0.0.0.0/8"), ("::ffff:192.168.122.10", "IPv4-mapped"),
                                 ("::192.168.122.10", "IPv4-compatible"), ("127.0.0.1", "loopback")] {
            #expect(Planner.unusableReason(ip(text))?.contains(fragment) == true, "\(text)")
        }
        #expect(Planner.unusableReason(ip("192.168.122.10")) == nil)
    }

    @Test func prefixParsingAndEdges() {
        #expect(IPPrefix(parsing: "192.168.1.0/24")?.description == "192.168.1.0/24")
        #expect(IPPrefix(parsing: "2001:db8::/64")?.description == "2001:db8::/64")
        for bad in ["192.168.1.1/24", "192.168.1.0/33", "192.168.1.0", "192.168.1.0/+8", "x/8", "10.0.0.0/08x"] {
            #expect(IPPrefix(parsing: bad) == nil, "\(bad)")
        }
        let p = IPPrefix(parsing: "10.1.2.0/23")!
        #expect(HostChecks.edgeReason(ip("10.1.2.0"), of: p) == "the network address")
        #expect(HostChecks.edgeReason(ip("10.1.3.255"), of: p) == "the broadcast address")
        #expect(HostChecks.edgeReason(ip("10.1.3.254"), of: p) == nil)
        #expect(HostChecks.edgeReason(ip("10.1.2.0"), of: IPPrefix(parsing: "10.1.2.0/31")!) == nil)
    }

    @Test func addressMustBeLocalAndGuestInsideItsNetwork() throws {
        let r = FakeResolver()
        func message(_ attrs: String) -> String {
            do {
                _ = try plan(virtport("<vp:portForward proto='tcp' \(attrs)><vp:range start='2222'/></vp:portForward>"), resolver: r)
                return "accepted"
            } catch { return (error as? VirtPortError)?.message ?? "\(error)" }
        }
        #expect(message("address='198.51.100.99'").contains("is not an address of this host"))
        #expect(message("guest='192.168.122.1'").contains("its gateway"))
        #expect(message("guest='10.9.9.9'").contains("is outside network 'default'"))
        r.networks["default"]!.ips[0].hosts = [DHCPHost(mac: mac(mac2), ip: ip("192.168.122.20"))]
        #expect(message("guest='192.168.122.20'").contains("is reserved in network 'default' for another interface"))
        r.leaseHoldersByAddress[ip("192.168.122.21")] = [mac(mac2)]
        #expect(message("guest='192.168.122.21'").contains("is leased in network 'default'"))
        r.leaseHoldersByAddress[ip("192.168.122.22")] = [mac(mac1)]  // its own lease
        #expect(message("guest='192.168.122.22'") == "accepted")
        r.local = nil
        #expect(message("address='203.0.113.5'").contains("the host's addresses could not be read"))
        r.networks = [:]
        #expect(message("guest='192.168.122.10'").contains("libvirt network 'default' of the interface is not defined"))
    }

    @Test func policyForwardLimitComesBeforePlanning() {
        let many = String(repeating: "<vp:portForward proto='tcp' guest='192.168.122.10'><vp:range start='2000'/></vp:portForward>", count: 65)
        #expect(throws: VirtPortError.invalid("domain web1: 65 portForward elements exceed the limit of 64 forwards per domain ([policy] max_forwards_per_domain = 64)")) {
            try plan(virtport(many))
        }
    }

    @Test func markupScanCountsAttributesAndNamespaces() {
        let attrs = (0..<300).map { "a\($0)='x'" }.joined(separator: " ")
        #expect(throws: VirtPortError.invalid("domain XML: line 2: an element with more than 64 attributes is refused")) {
            try DomainXML.parse(Array("<domain>\n<x \(attrs)/></domain>".utf8))
        }
        // Quoted '>' and '=' in values, comments and CDATA do not confuse it.
        let tricky = "<domain><!-- <a b='1' c='2'> --><x a='>=' b=\"'\"/><![CDATA[<y z='1'>]]></domain>"
        #expect(throws: VirtPortError.invalid("domain XML: <domain> has no <name>")) { try DomainXML.parse(Array(tricky.utf8)) }
    }

    @Test func utf16MetadataIsRefusedAndCharacterReferenceURIIsNotMetadata() throws {
        let xml = String(decoding: domainXML(metadata: virtport("<vp:portForward proto='tcp'><vp:range start='2222'/></vp:portForward>")), as: UTF8.self)
        var utf16: [UInt8] = [0xff, 0xfe]
        for unit in xml.utf16 { utf16 += [UInt8(unit & 0xff), UInt8(unit >> 8)] }
        #expect(DomainXML.mentionsVirtPort(utf16))
        #expect(throws: VirtPortError.self) { try DomainXML.parse(utf16) }
        let referenced = xml.replacingOccurrences(of: "urn:virtport:domain:1", with: "urn:virtport&#58;domain:1")
        #expect(!DomainXML.mentionsVirtPort(Array(referenced.utf8)))
        #expect(try DomainXML.parse(Array(referenced.utf8)).metadata == nil)  // as the hook sees it
    }
}
