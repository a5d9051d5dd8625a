import Glibc
import Testing
@testable import Netfilter
import VirtPortCore

/// ctnetlink requests byte by byte, and the flow record's key layout (no root needed).
@Suite struct ConntrackTests {
    @Test func deleteByTupleIsOneMessageWithTheOriginalTuple() {
        let t = Conntrack.Tuple(source: ip("203.0.113.2"), destination: ip("203.0.113.1"), proto: 17,
                                sourcePort: 40123, destinationPort: 7000)
        let m = Conntrack.deleteByTuple(t, sequence: 9)
        #expect(m == [
            72, 0, 0, 0,  // nlmsg_len
            0x02, 0x01,  // NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
            0x05, 0x00,  // NLM_F_REQUEST | NLM_F_ACK
            9, 0, 0, 0,  // seq
            0, 0, 0, 0,  // pid
            UInt8(AF_INET), 0, 0, 0,  // nfgenmsg: family, version 0, res_id 0
            52, 0, 0x01, 0x80,  // CTA_TUPLE_ORIG | NLA_F_NESTED
            20, 0, 0x01, 0x80,  // CTA_TUPLE_IP | NLA_F_NESTED
            8, 0, 1, 0, 203, 0, 113, 2,  // CTA_IP_V4_SRC
            8, 0, 2, 0, 203, 0, 113, 1,  // CTA_IP_V4_DST
            28, 0, 0x02, 0x80,  // CTA_TUPLE_PROTO | NLA_F_NESTED
            5, 0, 1, 0, 17, 0, 0, 0,  // CTA_PROTO_NUM udp (padded)
            6, 0, 2, 0, 0x9c, 0xbb, 0, 0,  // CTA_PROTO_SRC_PORT 40123, network order
            6, 0, 3, 0, 0x1b, 0x58, 0, 0,  // CTA_PROTO_DST_PORT 7000
        ])
    }

    /// A dump entry as the kernel sends it (orig and reply tuples, a zone) reads back as the tuple
    /// and zone a delete by tuple needs, and its status bits (a DNAT's); the delete carries the zone only when it is not 0.
    @Test func dumpEntriesParseToTheirOriginalTupleAndZone() throws {
        let orig = Conntrack.Tuple(source: ip("2001:db8:1::2"), destination: ip("2001:db8:1::1"), proto: 6,
                                   sourcePort: 40001, destinationPort: 2222)
        let reply = Conntrack.Tuple(source: ip("2001:db8:5::10"), destination: ip("2001:db8:1::2"), proto: 6,
                                    sourcePort: 22, destinationPort: 40001)
        func tuple(_ type: UInt16, _ t: Conntrack.Tuple) -> [UInt8] {
            Conntrack.nest(type, Conntrack.nest(Conntrack.tupleIP,
                                                Conntrack.attribute(3, t.source.bytes), Conntrack.attribute(4, t.destination.bytes)),
                           Conntrack.nest(Conntrack.tupleProto, Conntrack.attribute(Conntrack.protoNumber, [t.proto]),
                                          Conntrack.attribute(Conntrack.protoSourcePort, Conntrack.be16(t.sourcePort)),
                                          Conntrack.attribute(Conntrack.protoDestinationPort, Conntrack.be16(t.destinationPort))))
        }
        let body = tuple(Conntrack.tupleOriginal, orig) + tuple(Conntrack.tupleReply, reply)
            + Conntrack.attribute(Conntrack.zone, Conntrack.be16(7))
            + Conntrack.attribute(Conntrack.status, [0, 0, 0x01, 0xaa])  // big endian: IPS_DST_NAT among others
        let m = Conntrack.message(Conntrack.new, family: .ipv6, flags: 2, sequence: 5, body)
        let entry = try #require(Conntrack.parseEntry([1, 2, 3, 4] + m, offset: 4, length: m.count))
        #expect(entry.tuple == orig)
        #expect(entry.zone == 7)
        #expect(entry.status == 0x1aa && entry.status & Conntrack.statusDestinationNAT != 0)
        let delete = Conntrack.deleteByTuple(entry.tuple, zone: entry.zone, sequence: 1)
        #expect(NetlinkAttribute.list(delete, 20..<delete.count).map { $0.type & 0x3fff } == [1, 18])
        #expect(Conntrack.deleteByTuple(entry.tuple, sequence: 1).count == delete.count - 8)
        // An entry without ports (ICMP) or cut short is not one to delete.
        let icmp = Conntrack.message(Conntrack.new, family: .ipv6, flags: 2, sequence: 5,
                                     Conntrack.nest(Conntrack.tupleOriginal, Conntrack.nest(Conntrack.tupleIP,
                                         Conntrack.attribute(3, orig.source.bytes), Conntrack.attribute(4, orig.destination.bytes))))
        #expect(Conntrack.parseEntry(icmp, offset: 0, length: icmp.count) == nil)
        #expect(Conntrack.parseEntry(m, offset: 0, length: m.count + 4) == nil)
        // The dump request: IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, no attributes.
        #expect(Conntrack.dump(family: .ipv4, sequence: 3) == [20, 0, 0, 0, 0x01, 0x01, 0x01, 0x03, 3, 0, 0, 0, 0, 0, 0, 0,
                                                               UInt8(AF_INET), 0, 0, 0])
    }

    /// Walks stay while they are cheap (an empty table: 0.17 ms each); a busy table (8-9 ms per
    /// walk) sends the remaining ports to one dump.
    @Test func aDumpReplacesWalksOnlyWhenWalksAreSlow() {
        #expect(!NetfilterSession.dumpIsCheaper(walkMicros: 170, remaining: 15))
        #expect(!NetfilterSession.dumpIsCheaper(walkMicros: 8_500, remaining: 1))
        #expect(NetfilterSession.dumpIsCheaper(walkMicros: 8_500, remaining: 3))
        #expect(NetfilterSession.dumpIsCheaper(walkMicros: 1_200, remaining: 9))
    }

    @Test func filteredDeleteNamesTheReplySourceAndItsFlags() {
        let m = Conntrack.deleteBySource(ip("192.168.122.10"), proto: 6, port: 22, original: false, sequence: 1)
        let attrs = NetlinkAttribute.list(m, 20..<m.count)
        #expect(attrs.map { $0.type & 0x3fff } == [2, 25])  // CTA_TUPLE_REPLY, CTA_FILTER
        let filter = NetlinkAttribute.list(m, attrs[1].value)
        #expect(filter.map(\.type) == [1, 2])  // CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS
        #expect(m.u32(filter[0].value.lowerBound) == 0)
        #expect(m.u32(filter[1].value.lowerBound) == 1 | 1 << 3 | 1 << 4)  // IP_SRC | PROTO_NUM | PROTO_SRC_PORT
    }

    @Test func flowKeysRoundTripAndMatchTheirForward() throws {
        for (src, dst) in [("203.0.113.2", "203.0.113.1"), ("2001:db8:1::2", "2001:db8:1::1")] {
            let set = FlowSet(family: ip(src).family)
            let flow = Conntrack.Tuple(source: ip(src), destination: ip(dst), proto: 6, sourcePort: 40000, destinationPort: 2222)
            #expect(set.key(flow).count == set.keyLength)
            #expect(set.decode(set.key(flow)) == flow)
            let guest = ip(src.contains(":") ? "fd00::10" : "192.168.122.10")
            #expect(flow.created(by: ForwardElement(proto: .tcp, hostPort: 2222, guestAddress: guest, guestPort: 22)))
            #expect(flow.created(by: ForwardElement(proto: .tcp, hostAddress: ip(dst), hostPort: 2222, guestAddress: guest, guestPort: 22)))
            #expect(!flow.created(by: ForwardElement(proto: .udp, hostPort: 2222, guestAddress: guest, guestPort: 22)))
            #expect(!flow.created(by: ForwardElement(proto: .tcp, hostPort: 2223, guestAddress: guest, guestPort: 22)))
            #expect(!flow.created(by: ForwardElement(proto: .tcp, hostAddress: ip(src), hostPort: 2222, guestAddress: guest, guestPort: 22)))
        }
        // Five fields: what nft can still print back (6 bits a field in a 32-bit type).
        #expect(FlowSet(family: .ipv6).keyLength == 44 && FlowSet(family: .ipv4).keyLength == 20)
    }
}
