import Glibc
import Testing
@testable import Netfilter
import VirtPortCore

/// The exact netlink bytes virtport sends, checked against a fake kernel (no root needed).
/// Integers in headers are host order (little-endian here); keys and data are network order.
@Suite("netlink request bytes")
struct MessageBytesTests {
    static let element = ForwardElement(proto: .tcp, hostAddress: ip("203.0.113.5"), hostPort: 8080,
                                        guestAddress: ip("192.168.122.10"), guestPort: 22)

    /// NFNL_MSG_BATCH_BEGIN / _END around every batch.
    static func batchMarker(type: UInt8, sequence: UInt8) -> [UInt8] {
        [20, 0, 0, 0,  // nlmsg_len 20
         type, 0,  // nlmsg_type NFNL_MSG_BATCH_BEGIN (0x10) / NFNL_MSG_BATCH_END (0x11)
         0x01, 0x00,  // nlmsg_flags NLM_F_REQUEST
         sequence, 0, 0, 0,  // nlmsg_seq
         0, 0, 0, 0,  // nlmsg_pid (kernel fills it in)
         0,  // nfgen_family AF_UNSPEC
         0,  // version NFNETLINK_V0
         0, 10]  // res_id NFNL_SUBSYS_NFTABLES, big-endian
    }

    /// The header and the two name attributes of an element message for map fwd4_addr.
    static func elementHeader(length: UInt8, type: UInt8, flags: [UInt8]) -> [UInt8] {
        [length, 0, 0, 0,  // nlmsg_len
         type, 0x0a,  // nlmsg_type NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM (12) / DELSETELEM (14)
         flags[0], flags[1],  // nlmsg_flags
         101, 0, 0, 0,  // nlmsg_seq
         0, 0, 0, 0,  // nlmsg_pid
         1,  // nfgen_family NFPROTO_INET
         0,  // version
         0, 0,  // res_id
         14, 0, 2, 0,  // NFTA_SET_ELEM_LIST_SET, 10 bytes of value
         0x66, 0x77, 0x64, 0x34, 0x5f, 0x61, 0x64, 0x64, 0x72, 0,  // "fwd4_addr\0"
         0, 0,  // padding
         13, 0, 1, 0,  // NFTA_SET_ELEM_LIST_TABLE, 9 bytes of value
         0x76, 0x69, 0x72, 0x74, 0x70, 0x6f, 0x72, 0x74, 0,  // "virtport\0"
         0, 0, 0]  // padding
    }

    static let key: [UInt8] = [
        16, 0, 1, 0,  // NFTA_DATA_VALUE, 12 bytes
        203, 0, 113, 5,  // ip daddr 203.0.113.5
        6, 0, 0, 0,  // meta l4proto tcp, padded to a register
        0x1f, 0x90, 0, 0,  // th dport 8080, big-endian, padded
    ]

    @Test func addOneElement() throws {
        let fake = FakeTransport()
        let nf = try NetfilterSession(table: "virtport", transport: fake, firstSequence: 100)
        try nf.apply(adding: [Self.element], removing: [])

        let expected: [UInt8] = Self.batchMarker(type: 0x10, sequence: 100)
            + Self.elementHeader(length: 96, type: 12, flags: [0x05, 0x04])  // NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
            + [44, 0, 3, 0x80]  // NFTA_SET_ELEM_LIST_ELEMENTS, nested
            + [40, 0, 1, 0x80]  // NFTA_LIST_ELEM, nested
            + [20, 0, 1, 0x80]  // NFTA_SET_ELEM_KEY, nested
            + Self.key
            + [16, 0, 2, 0x80]  // NFTA_SET_ELEM_DATA, nested
            + [12, 0, 1, 0,  // NFTA_DATA_VALUE, 8 bytes
               192, 168, 122, 10,  // guest address
               0, 22, 0, 0]  // guest port 22, big-endian, padded
            + Self.batchMarker(type: 0x11, sequence: 102)
        #expect(fake.sent == [expected])
        #expect(nf.sequence == 103)
    }

    @Test func deleteOneElementSendsTheKeyOnly() throws {
        let fake = FakeTransport()
        let nf = try NetfilterSession(table: "virtport", transport: fake, firstSequence: 100)
        try nf.apply(adding: [], removing: [Self.element])

        let expected: [UInt8] = Self.batchMarker(type: 0x10, sequence: 100)
            + Self.elementHeader(length: 80, type: 14, flags: [0x05, 0x00])  // NLM_F_REQUEST | NLM_F_ACK
            + [28, 0, 3, 0x80]  // NFTA_SET_ELEM_LIST_ELEMENTS, nested
            + [24, 0, 1, 0x80]  // NFTA_LIST_ELEM, nested
            + [20, 0, 1, 0x80]  // NFTA_SET_ELEM_KEY, nested
            + Self.key
            + Self.batchMarker(type: 0x11, sequence: 102)
        #expect(fake.sent == [expected])
    }

    @Test func hairpinPrefixIsAnInterval() throws {
        let fake = FakeTransport()
        let nf = try NetfilterSession(table: "virtport", transport: fake, firstSequence: 100)
        try nf.apply(adding: [], removing: [], hairpinAdding: [Subnet("192.168.122.7/24")!])
        // Nothing to change but the set: one batch, no table check.
        #expect(fake.sent.count == 1)
        let body = Array(fake.sent[0][20..<(fake.sent[0].count - 20)])
        let elements: [UInt8] = [
            44, 0, 3, 0x80,  // NFTA_SET_ELEM_LIST_ELEMENTS, nested
            16, 0, 1, 0x80,  // list element 1 (the start)
            12, 0, 1, 0x80,  // NFTA_SET_ELEM_KEY, nested
            8, 0, 1, 0, 192, 168, 122, 0,  // NFTA_DATA_VALUE 192.168.122.0 (host bits cleared)
            24, 0, 2, 0x80,  // list element 2 (the end): libnftnl numbers them, the kernel ignores the type
            8, 0, 3, 0, 0, 0, 0, 1,  // NFTA_SET_ELEM_FLAGS NFT_SET_ELEM_INTERVAL_END, big-endian
            12, 0, 1, 0x80,  // NFTA_SET_ELEM_KEY, nested
            8, 0, 1, 0, 192, 168, 123, 0,  // NFTA_DATA_VALUE 192.168.123.0: first address after the prefix
        ]
        #expect(Array(body.suffix(elements.count)) == elements)
        #expect(String(decoding: body[24..<32], as: UTF8.self) == "hairpin4")
    }

    @Test func errorNamesTheElementTheKernelPointedAt() throws {
        let fake = FakeTransport()
        let nf = try NetfilterSession(table: "virtport", transport: fake, firstSequence: 100)
        let second = ForwardElement(proto: .tcp, hostAddress: ip("203.0.113.5"), hostPort: 8081,
                                    guestAddress: ip("192.168.122.10"), guestPort: 23)
        // Message 101; its second list element starts at 16 + 4 + 16 + 16 + 4 + 40 = 96.
        fake.errors[101] = (EEXIST, 96)
        #expect {
            try nf.apply(adding: [Self.element, second], removing: [])
        } throws: { error in
            let e = error as! NetfilterError
            return e.isExists && e.operation == "add element tcp/203.0.113.5:8081 -> 192.168.122.10:23 to map fwd4_addr"
        }
    }

    @Test func missingTableIsCreatedWithTheSkeletonAndAConcurrentCreatorWins() throws {
        let fake = FakeTransport()
        let nf = try NetfilterSession(table: "virtport", transport: fake, firstSequence: 100)
        fake.errors[101] = (ENOENT, nil)  // batch 1: the element's map does not exist
        fake.errors[103] = (ENOENT, nil)  // GETTABLE: no table
        // Batch 2 (BEGIN 104): NEWTABLE with NLM_F_EXCL is message 105; someone was faster.
        fake.errors[105] = (EEXIST, nil)
        try nf.apply(adding: [Self.element], removing: [])

        #expect(fake.sent.count == 4)
        let batches = fake.sent.map(NetlinkMessage.split)
        #expect(batches[0].count == 3)  // BEGIN, NEWSETELEM, END
        #expect(batches[1].map(\.type) == [0x0a01])  // NFT_MSG_GETTABLE
        let skeleton = batches[2]
        #expect(skeleton[1].type == 0x0a00 && skeleton[1].flags == 0x0605)  // NEWTABLE, CREATE|EXCL|ACK|REQUEST
        #expect(skeleton.filter { $0.type == 0x0a06 }.count == 26)  // NFT_MSG_NEWRULE: 12 dnat + 12 recording + 2 hairpin
        #expect(skeleton.filter { $0.type == 0x0a09 }.count == 12)  // NFT_MSG_NEWSET: 8 maps, 2 hairpin, 2 flows
        #expect(skeleton.filter { $0.type == 0x0a03 }.count == 3)  // NFT_MSG_NEWCHAIN
        #expect(batches[3].map(\.type) == [0x10, 0x0a0c, 0x11])  // only the element, again
    }

    @Test func deletingAnAbsentElementReadsBackAndSucceeds() throws {
        let fake = FakeTransport()
        let nf = try NetfilterSession(table: "virtport", transport: fake, firstSequence: 100)
        fake.errors[101] = (ENOENT, nil)  // DELSETELEM: not there
        // GETTABLE 103 succeeds; the GETSETELEM dump 104 of fwd4_addr comes back empty.
        try nf.apply(adding: [], removing: [Self.element])
        #expect(fake.sent.count == 3)  // the batch, GETTABLE, the dump; no second batch
        #expect(NetlinkMessage.split(fake.sent[2]).map(\.type) == [0x0a0d])  // NFT_MSG_GETSETELEM
        #expect(NetlinkMessage.split(fake.sent[2])[0].flags == 0x0301)  // NLM_F_DUMP | NLM_F_REQUEST
    }

    @Test func otherErrorsAreCollectedNotRetried() throws {
        let fake = FakeTransport()
        let nf = try NetfilterSession(table: "virtport", transport: fake, firstSequence: 100)
        let v6 = ForwardElement(proto: .udp, hostPort: 53, guestAddress: ip("fd00::10"), guestPort: 53)
        fake.errors[101] = (EINVAL, nil)
        fake.errors[102] = (EEXIST, nil)
        #expect {
            try nf.apply(adding: [Self.element, v6], removing: [])
        } throws: { error in
            let e = error as! NetfilterError
            return e.errno == EINVAL && e.others.map(\.errno) == [EEXIST]
                && e.others[0].operation == "add element udp/53 -> [fd00::10]:53 to map fwd6"
        }
        #expect(fake.sent.count == 1)
    }

    @Test func invalidElementsAreRefusedBeforeAnythingIsSent() throws {
        let fake = FakeTransport()
        let nf = try NetfilterSession(table: "virtport", transport: fake, firstSequence: 100)
        let longDev = ForwardElement(proto: .tcp, dev: "a-very-long-interface", hostPort: 1,
                                     guestAddress: ip("10.0.0.1"), guestPort: 1)
        let mixed = ForwardElement(family: .ipv4, proto: .tcp, hostAddress: ip("2001:db8::1"), hostPort: 1,
                                   guestAddress: ip("10.0.0.1"), guestPort: 1)
        for bad in [longDev, mixed] {
            #expect(throws: NetfilterError.self) { try nf.apply(adding: [bad], removing: []) }
        }
        #expect(fake.sent.isEmpty)
    }

    @Test func bigBatchesAreSplitIntoMessagesButStayOneDatagram() throws {
        let fake = FakeTransport()
        let nf = try NetfilterSession(table: "virtport", transport: fake, firstSequence: 1)
        let many = (0..<10_000).map {
            ForwardElement(proto: .tcp, hostPort: UInt16(10_000 + $0), guestAddress: ip("10.0.0.1"), guestPort: 80)
        }
        try nf.apply(adding: many, removing: [])
        #expect(fake.sent.count == 1)
        let messages = NetlinkMessage.split(fake.sent[0])
        #expect(messages.count > 3)
        #expect(messages.allSatisfy { $0.length <= NetlinkBatch.messageBudget })
        #expect(fake.reservations.first?.0 == fake.sent[0].count)
    }
}
