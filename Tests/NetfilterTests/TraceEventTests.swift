import Testing
@testable import Netfilter

/// NFT_MSG_TRACE messages as the kernel sends them (layout of `nft monitor trace`'s input), parsed
/// without a kernel: one attribute per field, big-endian numbers, a nested verdict.
struct TraceEventTests {
    /// A netlink attribute: length, type, payload, padded to 4.
    func attr(_ type: UInt16, _ payload: [UInt8]) -> [UInt8] {
        let len = UInt16(4 + payload.count)
        var out: [UInt8] = withUnsafeBytes(of: len.littleEndian) { Array($0) } + withUnsafeBytes(of: type.littleEndian) { Array($0) }
        out += payload
        while out.count % 4 != 0 { out.append(0) }
        return out
    }
    func be32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
    func str(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }

    func message(family: UInt8, _ attrs: [[UInt8]], type: UInt16 = TraceEvent.messageType) -> [UInt8] {
        let body: [UInt8] = [family, 0, 0, 0] + attrs.flatMap { $0 }    // nfgenmsg: family, version, res_id
        let len = UInt32(16 + body.count)
        var header: [UInt8] = [UInt8(len & 0xff), UInt8((len >> 8) & 0xff), 0, 0]
        header += [UInt8(type & 0xff), UInt8(type >> 8)]
        header += [UInt8](repeating: 0, count: 10)               // flags, seq, pid
        return header + body
    }

    /// An IPv4 TCP SYN 203.0.113.2:40000 -> 203.0.113.1:2222.
    let ip: [UInt8] = [0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 203, 0, 113, 2, 203, 0, 113, 1]
    let tcp: [UInt8] = [0x9c, 0x40, 0x08, 0xae, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xff, 0xff, 0, 0, 0, 0]

    @Test func ruleEventWithDropVerdictAndConntrack() throws {
        let m = message(family: 1, [
            attr(1, str("filter")), attr(2, str("forward")),
            attr(3, [0, 0, 0, 0, 0, 0, 0, 7]),                       // rule handle 7 (be64)
            attr(4, be32(3)),                                        // NFT_TRACETYPE_RULE
            attr(0x8000 | 5, attr(1, be32(0))),                      // nested verdict: NF_DROP
            attr(6, be32(0xab50c066)),                               // id
            attr(8, ip), attr(9, tcp),
            attr(10, be32(2)), attr(12, be32(5)),                    // iif 2, oif 5
            attr(19, [0]),                                           // ct direction original
            attr(21, be32(8)),                                       // ct state new
        ])
        let e = try #require(TraceEvent.parse(m))
        #expect(e.family == 1 && e.table == "filter" && e.chain == "forward")
        #expect(e.handle == 7 && e.kind == .rule && e.verdict == 0 && e.id == 0xab50c066)
        #expect(e.iif == 2 && e.oif == 5 && e.ctState == 8 && e.ctDirection == 0)
        #expect(e.l4proto == 6 && e.ports?.source == 40000 && e.ports?.destination == 2222)
        #expect(e.addresses?.source == [203, 0, 113, 2] && e.addresses?.destination == [203, 0, 113, 1])
        #expect(e.tcpFlags == "S")
    }

    @Test func jumpAndPolicyEvents() throws {
        let jump = try #require(TraceEvent.parse(message(family: 2, [
            attr(1, str("filter")), attr(2, str("FORWARD")), attr(4, be32(3)),
            attr(0x8000 | 5, attr(1, be32(UInt32(bitPattern: -3))) + attr(2, str("LIBVIRT_FWI"))),
        ])))
        #expect(jump.verdict == -3 && jump.target == "LIBVIRT_FWI" && jump.family == 2)
        let policy = try #require(TraceEvent.parse(message(family: 1, [
            attr(1, str("filter")), attr(2, str("forward")), attr(4, be32(1)), attr(16, be32(0)),
        ])))
        #expect(policy.kind == .policy && policy.policy == 0 && policy.handle == nil && policy.verdict == nil)
    }

    @Test func otherMessagesAreNotEvents() {
        #expect(TraceEvent.parse(message(family: 1, [attr(1, str("x"))], type: 10 << 8 | 6)) == nil)  // NEWRULE
        #expect(TraceEvent.parse([1, 2, 3]) == nil)
    }

    @Test func datagramSplitsIntoMessages() {
        let a = message(family: 1, [attr(1, str("a"))]), b = message(family: 7, [attr(1, str("bb"))])
        let parts = TraceEvent.messages(in: a + b)
        #expect(parts.count == 2 && parts.compactMap(TraceEvent.parse).map(\.table) == ["a", "bb"])
    }
}
