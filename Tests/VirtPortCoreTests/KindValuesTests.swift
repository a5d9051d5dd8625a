import Testing
@testable import VirtPortCore

/// The core's extension points for rule kinds: `KindValues` on forwards, plans and the policy, and
/// the `<portForward>` attributes registry.
@Suite("kind extension points")
struct KindValuesTests {
    @Test func equalByContentAndDistinctByValue() {
        var a = KindValues(), b = KindValues()
        #expect(a == b && a.isEmpty)
        a["x"] = [1, 2]
        #expect(a != b)
        b["x"] = [1, 2]
        #expect(a == b)
        b["x"] = [1, 3]
        #expect(a != b)
        // Same key, other type: not equal, and the typed read does not see it.
        b["x"] = "1 2"
        #expect(a != b)
        #expect(b["x", as: [Int].self] == nil)
        b["x", as: String.self] = nil
        #expect(b.isEmpty)
    }

    @Test func forwardsDifferingInAnAttributeStayDistinct() {
        let plain = ForwardSpec(proto: .tcp, ranges: [RangeSpec(ports: PortRange(80, 80))])
        var filtered = plain
        filtered.attributes["source"] = [IPPrefix(parsing: "10.0.0.0/8")!]
        #expect(plain != filtered)
        var again = plain
        again.attributes["source"] = [IPPrefix(parsing: "10.0.0.0/8")!]
        #expect(filtered == again)
    }

    @Test func registryNamesAreKnownToTheParserAndUnique() {
        #expect(Set(ForwardAttributes.names).count == ForwardAttributes.names.count)
        for name in ForwardAttributes.names {
            #expect(MetadataXML.forwardAttributes.contains(name))
            #expect(!["proto", "address", "dev", "mac", "guest"].contains(name))
        }
    }

    @Test func unknownAttributeListsTheRegisteredOnes() throws {
        let xml = domainXML(metadata: virtport(#"<vp:portForward proto="tcp" colour="red"><vp:range start="80"/></vp:portForward>"#))
        do {
            _ = try DomainXML.parse(xml)
            Issue.record("colour= accepted")
        } catch {
            for name in ["proto", "address", "dev", "mac", "guest"] + ForwardAttributes.names {
                #expect(error.message.contains("\(name)="))
            }
        }
    }
}
