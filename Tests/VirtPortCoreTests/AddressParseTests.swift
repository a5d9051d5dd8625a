#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import VirtPortCore

/// The byte-level MAC and address parsing (the journal parses every row's) answers exactly what
/// the general code did: compared with a copy of it on valid, odd and invalid text.
@Suite struct AddressParseTests {
    /// The general MAC parser, as it was before the fast path.
    static func referenceMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        return out
    }

    @Test(arguments: ["52:54:00:aa:bb:01", "52:54:00:AA:Bb:0F", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff",
                      "52:54:00:aa:bb:1", "52:54:00:aa:bb:011", "52-54-00-aa-bb-01", "52:54:00:aa:bb:0g",
                      "52:54:00:aa:bb", "52:54:00:aa:bb:01:02", "+1:54:00:aa:bb:01", "52:54:00:aa:bb:+f",
                      "", ":::::", "52:54:00:aa:bb:é1", "５2:54:00:aa:bb:01", "52;54:00:aa:bb:01"])
    func macMatchesTheGeneralParser(_ text: String) {
        #expect(MACAddress(text)?.bytes == Self.referenceMAC(text))
    }

    @Test func macDescriptionIsLowerCaseTwoDigits() {
        #expect(MACAddress(bytes: [0x52, 0x54, 0x00, 0xaa, 0x0b, 0xff])?.description == "52:54:00:aa:0b:ff")
        #expect(MACAddress("52:54:00:AA:BB:01")?.description == "52:54:00:aa:bb:01")
    }

    @Test(arguments: ["192.168.122.10", "2001:db8::1", "::ffff:1.2.3.4", "", "1.2.3", "1.2.3.4.5",
                      "2001:db8::g", "é.1.2.3", String(repeating: "1", count: 46),
                      "1111:2222:3333:4444:5555:6666:123.123.123.123"])
    func addressParsesAsBefore(_ text: String) {
        // inet_pton on the text itself is the reference.
        let expected: Bool
        if text.isEmpty || text.count > 45 {
            expected = false
        } else if text.contains(":") {
            var a = in6_addr()
            expected = inet_pton(AF_INET6, text, &a) == 1
        } else {
            var a = in_addr()
            expected = inet_pton(AF_INET, text, &a) == 1
        }
        #expect((IPAddress(text) != nil) == expected)
        if let a = IPAddress(text), !text.contains(".") { #expect(IPAddress(a.description) == a) }
    }
}
