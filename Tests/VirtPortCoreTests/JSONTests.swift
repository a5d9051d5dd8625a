import Foundation
import Testing
@testable import VirtPortCore

@Suite struct JSONTests {
    @Test func escaping() {
        let s = JSONValue.string("q\" b\\ /\n\r\t\u{08}\u{0C}\u{01}\u{1F}\u{7F} é 🚀 \u{2028}")
        #expect(s.serialized() == #""q\" b\\ /\n\r\t\b\f\u0001\u001f\u007f é 🚀 \u2028""#)
    }

    @Test func roundTripsThroughFoundation() throws {
        let weird = "name with \"quotes\", \\backslash\\, tab\t, NUL\u{0}, emoji 🐧"
        let value = JSONValue.object([
            ("s", .string(weird)), ("n", .int(-42)), ("big", .int(Int.max)), ("t", .bool(true)), ("f", .bool(false)),
            ("z", .null), ("a", .array([.int(1), .array([]), .object([])])),
        ])
        for pretty in [false, true] {
            let data = Data(value.serialized(pretty: pretty).utf8)
            let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            #expect(object["s"] as? String == weird)
            #expect(object["n"] as? Int == -42)
            #expect(object["big"] as? Int == Int.max)
            #expect(object["t"] as? Bool == true)
            #expect(object["z"] is NSNull)
            #expect((object["a"] as? [Any])?.count == 3)
        }
    }

    @Test func layoutCompactAndPretty() {
        let v = JSONValue.object([("b", .int(1)), ("a", .array([.null, .string("x")])), ("e", .object([]))])
        #expect(v.serialized() == #"{"b":1,"a":[null,"x"],"e":{}}"#)
        #expect(v.serialized(pretty: true) == """
        {
          "b": 1,
          "a": [
            null,
            "x"
          ],
          "e": {}
        }
        """)
    }

    @Test func keyOrderIsKeptAndCountsForEquality() {
        let ab = JSONValue.object([("a", .int(1)), ("b", .int(2))])
        let ba = JSONValue.object([("b", .int(2)), ("a", .int(1))])
        #expect(ab != ba)
        #expect(ab == .object([("a", .int(1)), ("b", .int(2))]))
        #expect(JSONValue.optional(nil) == .null)
    }

    @Test func domainNameIsEscapedInPlan() {
        let p = Plan(domainName: "we\"ird\\vm", domainUUID: "u", mappings: [])
        #expect(p.json.serialized() == #"{"domain":{"name":"we\"ird\\vm","uuid":"u"},"forwards":[],"guards":[]}"#)
    }

    @Test func ipv6MappingJSON() {
        let m = Mapping(proto: .sctp, hostAddress: ip("2001:db8::5"), dev: "eth0", hostPorts: PortRange(9000, 9001),
                        guestAddress: ip("fd00::10"), guestPortStart: 19000, mac: nil, network: nil, guestSource: .lease)
        #expect(m.json.serialized() == #"{"proto":"sctp","host_address":"2001:db8::5","dev":"eth0","host_ports":"9000-9001","host_port_start":9000,"host_port_end":9001,"guest_address":"fd00::10","guest_port_start":19000,"guest_port_end":19001,"mac":null,"network":null,"guest_source":"dhcp-lease","state":"ready"}"#)
    }
}
