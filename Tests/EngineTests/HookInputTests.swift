#if canImport(Glibc)
import Glibc
#endif
import Testing
import VirtPortCore
@testable import Engine

@Suite struct HookInputTests {
    @Test func uuidFromFixtureShapedXML() {
        let xml = Array("<domain type='qemu'>\n  <name>x</name>\n  <uuid>10CA34A4-D7DE-462E-8906-BE833E7F6CAE</uuid>\n</domain>".utf8)
        #expect(HookInput.domainUUID(xml) == "10ca34a4-d7de-462e-8906-be833e7f6cae")
        #expect(HookInput.domainUUID(Array("<domain><name>x</name></domain>".utf8)) == nil)
        #expect(HookInput.domainUUID(Array("<domain><uuid>not-a-uuid</uuid></domain>".utf8)) == nil)
    }

}
