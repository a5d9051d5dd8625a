import Testing
@testable import VirtPortCore

/// `source=`: grammar, the plan's filters, `[policy] require_source_ports`, `add --source`.
@Suite("source= lists")
struct SourceListTests {
    func plan(_ body: String, policy: Policy = Policy()) throws(VirtPortError) -> Plan {
        let domain = try DomainXML.parse(domainXML(metadata: virtport(body)))
        return try Planner.plan(domain: domain, resolver: NoGuestAddresses(), policy: policy)
    }

    func refusal(_ body: String, policy: Policy = Policy()) -> String {
        do { _ = try plan(body, policy: policy); return "accepted" } catch { return error.message }
    }

    @Test func parsesPrefixesAndBareAddresses() throws {
        let p = try SourceList.parse("203.0.113.0/24\t2001:db8:5::/48 \n 198.51.100.7 2001:db8::1", path: "x")
        #expect(p.map(\.description) == ["203.0.113.0/24", "2001:db8:5::/48", "198.51.100.7/32", "2001:db8::1/128"])
        #expect(SourceList.text(p) == "203.0.113.0/24 2001:db8:5::/48 198.51.100.7 2001:db8::1")
    }

    @Test(arguments: [
        ("", "x: source=\"\" names no prefix (leave source= out to allow every client)"),
        ("10.0.0.1/8", "x: source=\"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)"),
        ("2001:db8::1/32", "x: source=\"2001:db8::1/32\" has host bits set (did you mean 2001:db8::/32?)"),
        ("10.0.0.0/8,10.1.0.0/16", "x: source=\"10.0.0.0/8,10.1.0.0/16\" is not an IPv4 or IPv6 address or prefix (separate prefixes with spaces)"),
        ("example.com", "x: source=\"example.com\" is not an IPv4 or IPv6 address or prefix"),
        ("10.0.0.0/33", "x: source=\"10.0.0.0/33\" is not an IPv4 or IPv6 address or prefix"),
        ("10.0.0.0/8 10.0.0.0/8", "x: source= names 10.0.0.0/8 twice"),
    ])
    func refusesBadLists(text: String, message: String) {
        #expect(throws: VirtPortError.invalid(message)) { try SourceList.parse(text, path: "x") }
    }

    @Test func limitIsDocumentedAndHeld() throws {
        let ok = (0..<SourceList.maxPrefixes).map { "10.\($0 / 256).\($0 % 256).0/24" }
        #expect(try SourceList.parse(ok.joined(separator: " "), path: "x").count == 1024)
        #expect(throws: VirtPortError.invalid("x: source= names 1025 prefixes, more than 1024")) {
            try SourceList.parse((ok + ["192.0.2.1"]).joined(separator: " "), path: "x")
        }
    }

    @Test func metadataCarriesTheListIntoEveryMappingOfItsForward() throws {
        let p = try plan("""
            <vp:portForward proto='tcp' source='203.0.113.0/24 2001:db8::/32'>
              <vp:range start='8000' end='8010'/><vp:range start='8005' exclude='yes'/></vp:portForward>
            <vp:portForward proto='udp'><vp:range start='5353'/></vp:portForward>
            """)
        #expect(p.mappings.count == 3)
        #expect(p.sourceFilters.map { "\($0.proto) \($0.ports) \($0.text)" }
                == ["tcp 8000-8004 203.0.113.0/24 2001:db8::/32", "tcp 8006-8010 203.0.113.0/24 2001:db8::/32"])
        #expect(p.sourceFilters.allSatisfy { f in p.mappings.contains(where: f.filters) })
        #expect(p.sourceFilters[0].counterName(.ipv4) == "tcp4_8000_8004")
    }

    @Test func addressOfOneFamilyNeedsAPrefixOfIt() {
        #expect(refusal("<vp:portForward proto='tcp' address='192.0.2.1' source='2001:db8::/32'><vp:range start='8080'/></vp:portForward>")
                == "portForward[1]: source= names no IPv4 prefix, but address=\"192.0.2.1\" is IPv4: every client would be dropped")
    }

    @Test func policyRequiresAListOnSomePorts() {
        var policy = Policy()
        policy.requireSourcePorts = [PortRange(3389, 3389), PortRange(5900, 5999)]
        let open = "<vp:portForward proto='tcp'><vp:range start='5990' end='6010'/></vp:portForward>"
        #expect(refusal(open, policy: policy)
                == "portForward[1]: host port tcp 5990 needs source= ([policy] require_source_ports = [\"3389\", \"5900-5999\"])")
        let all = "<vp:portForward proto='tcp' source='10.0.0.0/8 ::/0'><vp:range start='3389'/></vp:portForward>"
        #expect(refusal(all, policy: policy).contains("may not be open to every address (source= names ::/0;"))
        let fine = "<vp:portForward proto='tcp' source='10.0.0.0/8'><vp:range start='3389'/></vp:portForward>"
        #expect(refusal(fine, policy: policy) == "accepted")
        #expect(refusal(open) == "accepted")
    }

    @Test func addWritesTheAttribute() throws {
        var edit = try MetadataEdit(nil)
        var f = try MetadataEdit.forward(proto: "tcp", ports: "8080:80", address: nil, dev: nil, guest: "192.168.122.10", mac: nil)
        f.sources = try SourceList.parse("203.0.113.0/24 10.0.0.1", path: "add", attribute: "--source")
        edit.add(f)
        let back = try edit.metadata()
        #expect(back.forwards[0].sources?.map(\.description) == ["203.0.113.0/24", "10.0.0.1/32"])
        #expect(edit.xml.contains("source=\"203.0.113.0/24 10.0.0.1\""))
    }
}
