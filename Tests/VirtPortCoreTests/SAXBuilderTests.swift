import Testing
@testable import VirtPortCore

/// SecureXML builds ParsedElements from SAX2 callbacks: only what `keep` admits is built, the rest
/// is still checked by libxml2, and what is built matches what the tree copy it replaced built.
@Suite struct SAXBuilderTests {
    /// Elements and attributes in a built tree.
    static func count(_ e: ParsedElement) -> Int {
        1 + e.attributes.count + e.children.reduce(0) { $0 + count($1) }
    }

    static func parseDomain(_ xml: String) throws(VirtPortError) -> ParsedElement {
        try SecureXML.parse(Array(xml.utf8), what: "domain XML", keep: DomainXML.reads)
    }

    @Test func foreignSubtreeBuildsNothingAndTheDomainStillParses() throws {
        let foreign = "<o:a xmlns:o='urn:other'>" + String(repeating: "<o:b c='d'><o:e/></o:b>", count: 100_000) + "</o:a>"
        let xml = String(decoding: domainXML(metadata: virtport("<vp:portForward proto='tcp'><vp:range start='2222'/></vp:portForward>") + foreign), as: UTF8.self)
        let root = try Self.parseDomain(xml)
        let metadata = try #require(root.child("metadata"))
        // The foreign subtree (200,001 elements, 100,000 attributes) is not built at all: not even its root.
        #expect(metadata.children.map(\.qualifiedName) == ["vp:virtport"])
        #expect(Self.count(root) < 30, "\(Self.count(root)) nodes built")
        let domain = try DomainXML.parse(Array(xml.utf8))
        #expect(domain.name == "web1" && domain.metadata?.forwards.count == 1 && domain.interfaces.count == 1)
    }

    /// Skipped subtrees are tokenized and checked by libxml2: their first error is reported, with its line.
    @Test(arguments: [
        ("<o:b>\n</o:c>", "domain XML: malformed XML at line 9: Opening and ending tag mismatch: b line 8 and c"),
        ("\n<q:b/>", "domain XML: malformed XML at line 9: Namespace prefix q on b is not defined"),
        ("<o:b c='1'\n c='2'/>", "domain XML: malformed XML at line 9: Attribute c redefined"),
        ("\n\n<o:b>&nope;</o:b>", "domain XML: malformed XML at line 10: Entity 'nope' not defined"),
    ])
    func errorInsideASkippedSubtreeIsReportedWithItsLine(inner: String, message: String) {
        let xml = "<domain>\n<name>a</name>\n<uuid>u</uuid>\n<devices>\n<disk><driver/></disk>\n</devices>\n<metadata>\n<o:a xmlns:o='urn:o'>\(inner)</o:a>\n</metadata>\n</domain>"
        #expect(throws: VirtPortError.invalid(message)) { try DomainXML.parse(Array(xml.utf8)) }
    }

    /// An element's text is its text and CDATA runs that are not all white space, where a run
    /// ends at an element, comment or processing instruction, or where text meets CDATA.
    @Test(arguments: [
        ("a<!--x-->b", "ab"),
        (" <!--x--> web <!--y-->  ", " web "),
        ("a<!--x--> <!--y-->b", "ab"),
        ("<![CDATA[ web ]]>", " web "),
        ("<![CDATA[a]]><![CDATA[b]]>", "ab"),
        (" <![CDATA[ ]]>x<![CDATA[  ]]> ", "x"),
        ("a<![CDATA[b]]>c", "abc"),
        ("a<?pi x?>b", "ab"),
        ("a<b>zz</b>c", "ac"),
        ("a&amp;b&lt;c&#65;&#x42;&gt;", "a&b<cAB>"),
        ("\n  \t", ""),
    ])
    func textIsJoinedFromNonBlankRuns(content: String, text: String) throws {
        let root = try SecureXML.parse(Array("<r><n>\(content)</n></r>".utf8), what: "test")
        #expect(root.child("n")?.text == text)
    }

    /// libxml2 hands `&` over as `&#38;` (entity substitution stays off); nothing else is escaped.
    @Test(arguments: [
        ("a&amp;b", "a&b"), ("a&#38;b", "a&b"), ("&amp;#38;", "&#38;"), ("&#38;&#38;", "&&"),
        ("&lt;&gt;&quot;&apos;", "<>\"'"), ("&#x41;&#66;", "AB"), ("é&amp;€", "é&€"),
        ("a\tb\nc", "a b c"), ("#38;&", ""),
    ])
    func attributeValuesAreDecodedLikeTheTree(written: String, value: String) throws {
        if written == "#38;&" {  // a raw `&` is malformed, not decoded
            #expect(throws: VirtPortError.self) { try SecureXML.parse(Array("<r a='\(written)'/>".utf8), what: "test") }
            return
        }
        let root = try SecureXML.parse(Array("<r a='\(written)'/>".utf8), what: "test")
        #expect(root.attribute("a") == value)
    }

    /// The budget counts built elements, their attributes and every child element looked at:
    /// exactly at the limit parses, one more is refused.
    @Test func nodeBudgetIsExact() throws {
        func document(children: Int) -> [UInt8] {
            Array(("<r a='1'>" + String(repeating: "<c/>", count: children) + "</r>").utf8)
        }
        // root + its attribute + (looked at + built) per child
        let fits = (SecureXML.maxCopiedNodes - 2) / 2
        #expect(try SecureXML.parse(document(children: fits), what: "test").children.count == fits)
        #expect(throws: VirtPortError.invalid("test: more than 100000 elements and attributes where virtport reads (its metadata, the interfaces)")) {
            try SecureXML.parse(document(children: fits + 1), what: "test")
        }
    }

    /// The parse stops once the budget is spent: a later error is never reached (either way the
    /// document is refused with one line).
    @Test func parseStopsAtTheBudget() {
        let xml = "<r>" + String(repeating: "<c/>", count: 60_000) + "</r><oops"
        #expect(throws: VirtPortError.invalid("test: more than 100000 elements and attributes where virtport reads (its metadata, the interfaces)")) {
            try SecureXML.parse(Array(xml.utf8), what: "test")
        }
    }

    /// `keep` decisions are remembered per (parent, child) pair of names and namespaces, never
    /// across parents or namespaces.
    @Test func keepDecisionsDependOnParentAndNamespace() throws {
        let xml = """
        <domain><name>a</name><uuid>u</uuid>
        <devices><name>no</name><source/><interface type='network'><source network='n1'/><actual><source bridge='b1'/></actual></interface>
        <name>no</name><interface type='bridge'><source bridge='b2'/></interface></devices>
        <metadata><x:virtport xmlns:x='urn:other'/><vp:virtport xmlns:vp='urn:virtport:domain:1'/><x:virtport xmlns:x='urn:other'/></metadata>
        </domain>
        """
        let root = try Self.parseDomain(xml)
        #expect(root.children.map(\.name) == ["name", "uuid", "devices", "metadata"])
        let devices = try #require(root.child("devices"))
        #expect(devices.children.map(\.name) == ["interface", "interface"])
        #expect(devices.children[0].child("source")?.attribute("network") == "n1")
        #expect(devices.children[0].child("actual")?.child("source")?.attribute("bridge") == "b1")
        #expect(devices.children[1].child("source")?.attribute("bridge") == "b2")
        #expect(root.child("metadata")?.children.map(\.namespace) == ["urn:virtport:domain:1"])
    }

    @Test func namesNamespacesPrefixesAndLinesAreKept() throws {
        let xml = "<r xmlns='urn:d' xmlns:p='urn:p'>\n<p:a p:x='1' y='2'/>\n\n<b xmlns=''><c/></b></r>"
        let root = try SecureXML.parse(Array(xml.utf8), what: "test")
        #expect(root.name == "r" && root.namespace == "urn:d" && root.prefix == nil && root.line == 1)
        #expect(root.attributes.isEmpty)  // namespace declarations are not attributes
        let a = root.children[0]
        #expect(a.qualifiedName == "p:a" && a.namespace == "urn:p" && a.line == 2)
        #expect(a.attributes.map(\.name) == ["x", "y"] && a.attributes.map(\.namespace) == ["urn:p", nil])
        let b = root.children[1]
        #expect(b.namespace == nil && b.line == 4 && b.children.first?.namespace == nil)
    }
}
