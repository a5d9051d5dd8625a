import Foundation
import Testing
@testable import VirtPortCore

@Suite struct SecureXMLTests {
    static let billionLaughs = """
    <?xml version="1.0"?>
    <!DOCTYPE lolz [
     <!ENTITY lol "lol">
     <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
     <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
     <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
     <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
     <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
     <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
     <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
     <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
     <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
    ]>
    <domain><name>&lol9;</name><uuid>u</uuid></domain>
    """

    @Test func billionLaughsIsRefusedFast() {
        let bytes = Array(Self.billionLaughs.utf8)
        let clock = ContinuousClock()
        var outcome: Result<Domain, VirtPortError>?
        let elapsed = clock.measure { outcome = Result { () throws(VirtPortError) in try DomainXML.parse(bytes) } }
        #expect(elapsed < .milliseconds(100), "took \(elapsed)")
        #expect(throws: VirtPortError.invalid("domain XML: line 2: <!DOCTYPE> is refused (libvirt XML never declares a DTD or entities)")) {
            try outcome?.get()
        }
        // The network parser shares the refusal.
        #expect(throws: VirtPortError.self) { try NetworkXML.parse(bytes) }
    }

    @Test func oversizeIsRefusedBeforeParsing() {
        var bytes = Array("<domain><name>a</name><uuid>u</uuid>".utf8)
        bytes += [UInt8](repeating: 0x20, count: SecureXML.maxInputBytes)
        bytes += Array("</domain>".utf8)
        #expect(throws: VirtPortError.invalid("domain XML: input is \(bytes.count) bytes, over the limit of 4194304 bytes")) {
            try DomainXML.parse(bytes)
        }
    }

    @Test func inputJustUnderTheLimitParses() throws {
        var bytes = Array("<domain><name>a</name><uuid>u</uuid>".utf8)
        let tail = Array("</domain>".utf8)
        bytes += [UInt8](repeating: 0x20, count: SecureXML.maxInputBytes - bytes.count - tail.count) + tail
        #expect(bytes.count == SecureXML.maxInputBytes)
        #expect(try DomainXML.parse(bytes).name == "a")
    }

    @Test func externalEntityInAttributeIsRefused() {
        let xml = """
        <!DOCTYPE d [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x.dtd"> %p;]>
        <domain><name>a</name><uuid>u</uuid></domain>
        """
        #expect(throws: VirtPortError.invalid("domain XML: line 1: <!DOCTYPE> is refused (libvirt XML never declares a DTD or entities)")) {
            try DomainXML.parse(Array(xml.utf8))
        }
    }

    @Test func deepNestingIsBounded() {
        let depth = 5000
        let xml = String(repeating: "<a>", count: depth) + String(repeating: "</a>", count: depth)
        #expect(throws: VirtPortError.self) { try DomainXML.parse(Array(xml.utf8)) }
    }

    @Test func invalidUTF8IsAnError() {
        let bytes = Array("<domain><name>".utf8) + [0xff, 0xfe] + Array("</name></domain>".utf8)
        do {
            _ = try DomainXML.parse(bytes)
            Issue.record("accepted")
        } catch {
            #expect(error.message.hasPrefix("domain XML: malformed XML at line 1: "), "\(error.message)")
        }
    }

    /// libxml2 must print nothing itself: errors come back as one line in the thrown error.
    @Test func libxml2PrintsNothingToStderr() throws {
        let path = NSTemporaryDirectory() + "virtport-stderr-\(getpid())"
        let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0o600)
        try #require(fd >= 0)
        let saved = dup(2)
        dup2(fd, 2)
        _ = try? DomainXML.parse(Array("<domain><name>a</nme></domain>".utf8))
        _ = try? DomainXML.parse(Array(Self.billionLaughs.utf8))
        _ = try? DomainXML.parse(Array("<domain><name>&x;</name></domain>".utf8))
        _ = try? NetworkXML.parse(Array("<network><x:y/></network>".utf8))
        _ = try? DomainXML.parse([0x3c, 0xff, 0x00])
        dup2(saved, 2)
        close(saved)
        close(fd)
        let written = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        unlink(path)
        // Other tests may write to stderr meanwhile; libxml2's own output has these markers.
        #expect(!written.contains("parser error"), "\(written)")
        #expect(!written.contains("namespace error"), "\(written)")
        #expect(!written.contains("^"), "\(written)")
    }

    @Test func concurrentParsesAreIndependent() async throws {
        let good = domainXML(metadata: designExample)
        let bad = Array("<domain><name>a</nme></domain>".utf8)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<64 {
                group.addTask { () throws -> Void in
                    if i % 2 == 0 {
                        #expect(try DomainXML.parse(good).metadata?.forwards.count == 2)
                    } else {
                        #expect(throws: VirtPortError.self) { try DomainXML.parse(bad) }
                    }
                }
            }
            try await group.waitForAll()
        }
    }
}
