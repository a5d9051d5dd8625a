#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import VirtPortCore

/// One element as the kernel dumps it.
struct KernelElement {
    var key: [UInt8]
    var data: [UInt8]
    var flags: UInt32
}

/// Requests outside batches: NFT_MSG_GETTABLE and NFT_MSG_GETSETELEM dumps.
extension NetfilterSession {
    /// NFT_MSG_GETTABLE with NLM_F_ACK: true on the ack, false on ENOENT.
    func getTable(family: TableFamily = .inet) throws(NetfilterError) -> Bool {
        let sequence = takeSequence()
        let t = nftnl_table_alloc()!
        defer { nftnl_table_free(t) }
        nftnl_table_set_str(t, UInt16(NFTNL_TABLE_NAME.rawValue), table)
        let request = build(NFT_MSG_GETTABLE, flags: Netlink.ack, sequence: sequence, family: family) {
            nftnl_table_nlmsg_build_payload($0, t)
        }
        try transport.send(request)
        while true {
            guard let reply = try transport.receive(timeout: BatchExchange.replyTimeout) else {
                throw NetfilterError(errno: ETIMEDOUT, operation: "read table \(family) \(table)")
            }
            for message in NetlinkMessage.split(reply) where message.sequence == sequence {
                guard let ack = NetlinkAck(message, in: reply) else { continue }  // the NEWTABLE answer
                switch ack.errno {
                case 0: return true
                case ENOENT: return false
                default:
                    throw NetfilterError(errno: ack.errno, operation: "read table \(family) \(table)", detail: ack.message)
                }
            }
        }
    }

    /// Every element of one `fwd*` map.
    func forwardElements(of map: ForwardMap) throws(NetfilterError) -> [ForwardElement] {
        try dumpSet(map.name).compactMap { map.decode(key: $0.key, data: $0.data) }
    }

    /// The prefixes of one hairpin set.
    func hairpinSubnets(of set: HairpinSet) throws(NetfilterError) -> [Subnet] {
        let elements = try dumpSet(set.name).map {
            HairpinSet.Element(key: $0.key, isEnd: $0.flags & UInt32(NFT_SET_ELEM_INTERVAL_END.rawValue) != 0)
        }
        return set.subnets(from: elements)
    }

    /// NFT_MSG_GETSETELEM dump of set `name`, parsed by libnftnl. Restarts when the kernel flags the
    /// dump as interrupted (the set changed meanwhile).
    /// - Throws: `.missingTable` when the table is absent; ENOENT naming the set when only it is.
    func dumpSet(_ name: String, family: TableFamily = .inet) throws(NetfilterError) -> [KernelElement] {
        var attempt = 0
        while true {
            attempt += 1
            let (elements, interrupted) = try dumpSetOnce(name, family: family)
            if !interrupted || attempt == 3 { return elements }
        }
    }

    private func dumpSetOnce(_ name: String, family: TableFamily) throws(NetfilterError)
        -> (elements: [KernelElement], interrupted: Bool) {
        let sequence = takeSequence()
        let s = nftnl_set_alloc()!
        defer { nftnl_set_free(s) }
        nftnl_set_set_str(s, UInt16(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(s, UInt16(NFTNL_SET_NAME.rawValue), name)
        let request = build(NFT_MSG_GETSETELEM, flags: Netlink.dump, sequence: sequence, family: family) {
            nftnl_set_elems_nlmsg_build_payload($0, s)
        }
        try transport.send(request)

        var elements: [KernelElement] = []
        let operation = "list set \(name) of table \(family) \(table)"
        let end = try receiveDump(sequence: sequence, type: NFT_MSG_NEWSETELEM, operation: operation) {
            (reply, message) throws(NetfilterError) in
            try Self.parseElements(reply, message, into: &elements, operation: operation)
        }
        switch end {
        case .complete(let interrupted):
            return (elements, interrupted)
        case .missing(let detail):
            if try !getTable(family: family) { throw NetfilterError.missingTable(table) }
            throw NetfilterError(errno: ENOENT, operation: operation, detail: detail)
        }
    }

    /// How a dump ended: all of it came (`interrupted`: the kernel's ruleset changed meanwhile,
    /// NLM_F_DUMP_INTR), or the kernel answered ENOENT (the object dumped does not exist).
    enum DumpEnd {
        case complete(interrupted: Bool)
        case missing(detail: String?)
    }

    /// Receives the replies of the dump request `sequence` (already sent) until its end, handing
    /// each message of `type` (NFT_MSG_NEW…) to `each`.
    /// - Throws: ETIMEDOUT without a reply, or the kernel's error other than ENOENT.
    func receiveDump(sequence: UInt32, type: nf_tables_msg_types, operation: String,
                     each: (_ reply: [UInt8], _ message: NetlinkMessage) throws(NetfilterError) -> Void)
        throws(NetfilterError) -> DumpEnd {
        var interrupted = false
        while true {
            guard let reply = try transport.receive(timeout: BatchExchange.replyTimeout) else {
                throw NetfilterError(errno: ETIMEDOUT, operation: operation)
            }
            for message in NetlinkMessage.split(reply) where message.sequence == sequence {
                if message.flags & Netlink.dumpInterrupted != 0 { interrupted = true }
                switch message.type {
                case Netlink.typeDone:
                    return .complete(interrupted: interrupted)
                case Netlink.typeError:
                    guard let ack = NetlinkAck(message, in: reply) else { continue }
                    if ack.errno == 0 { return .complete(interrupted: interrupted) }
                    if ack.errno == ENOENT { return .missing(detail: ack.message) }
                    throw NetfilterError(errno: ack.errno, operation: operation, detail: ack.message)
                case Netlink.nftablesSubsystem | UInt16(type.rawValue):
                    try each(reply, message)
                default:
                    continue
                }
            }
        }
    }

    /// Appends the elements of one NEWSETELEM message (libnftnl `nftnl_set_elems_nlmsg_parse`).
    private static func parseElements(_ reply: [UInt8], _ message: NetlinkMessage, into out: inout [KernelElement],
                                      operation: String) throws(NetfilterError) {
        let s = nftnl_set_alloc()!
        defer { nftnl_set_free(s) }
        let parsed = reply.withUnsafeBytes { raw in
            let header = UnsafeMutableRawPointer(mutating: raw.baseAddress! + message.offset)
                .assumingMemoryBound(to: nlmsghdr.self)
            return nftnl_set_elems_nlmsg_parse(header, s)
        }
        guard parsed >= 0 else { throw NetfilterError(errno: EPROTO, operation: operation, detail: "unparsable reply") }
        guard let iterator = nftnl_set_elems_iter_create(s) else { return }
        defer { nftnl_set_elems_iter_destroy(iterator) }
        while let e = nftnl_set_elems_iter_next(iterator) {
            out.append(KernelElement(key: bytes(e, UInt16(NFTNL_SET_ELEM_KEY)), data: bytes(e, UInt16(NFTNL_SET_ELEM_DATA)),
                                     flags: nftnl_set_elem_is_set(e, UInt16(NFTNL_SET_ELEM_FLAGS))
                                         ? nftnl_set_elem_get_u32(e, UInt16(NFTNL_SET_ELEM_FLAGS)) : 0))
        }
    }

    private static func bytes(_ e: OpaquePointer, _ attribute: UInt16) -> [UInt8] {
        guard nftnl_set_elem_is_set(e, attribute) else { return [] }
        var length: UInt32 = 0
        guard let value = nftnl_set_elem_get(e, attribute, &length) else { return [] }
        return Array(UnsafeRawBufferPointer(start: value, count: Int(length)))
    }

    /// One named counter object of a table (NFT_MSG_GETOBJ dump).
    struct CounterObject {
        let name: String
        let packets: UInt64
        let bytes: UInt64
    }

    /// Every counter object of `table inet|bridge <table>` (NFT_MSG_GETOBJ dump), in the kernel's
    /// order; empty when the table is absent or the dump was cut short.
    func counterObjects(table: String, family: TableFamily) throws(NetfilterError) -> [CounterObject] {
        let sequence = takeSequence()
        let o = nftnl_obj_alloc()!
        defer { nftnl_obj_free(o) }
        nftnl_obj_set_str(o, UInt16(NFTNL_OBJ_TABLE), table)
        nftnl_obj_set_u32(o, UInt16(NFTNL_OBJ_TYPE), GuardTable.objectCounter)
        let request = build(NFT_MSG_GETOBJ, flags: Netlink.dump, sequence: sequence, family: family) {
            nftnl_obj_nlmsg_build_payload($0, o)
        }
        try transport.send(request)
        var out: [CounterObject] = []
        let end = try receiveDump(sequence: sequence, type: NFT_MSG_NEWOBJ,
                                  operation: "list counters of table \(family) \(table)") {
            (reply, message) throws(NetfilterError) in
            let o = nftnl_obj_alloc()!
            defer { nftnl_obj_free(o) }
            let parsed = reply.withUnsafeBytes { raw in
                nftnl_obj_nlmsg_parse(UnsafeMutableRawPointer(mutating: raw.baseAddress! + message.offset)
                    .assumingMemoryBound(to: nlmsghdr.self), o)
            }
            guard parsed >= 0, let t = nftnl_obj_get_str(o, UInt16(NFTNL_OBJ_TABLE)), String(cString: t) == table,
                  let n = nftnl_obj_get_str(o, UInt16(NFTNL_OBJ_NAME)) else { return }
            out.append(CounterObject(name: String(cString: n), packets: nftnl_obj_get_u64(o, UInt16(NFTNL_OBJ_CTR_PKTS)),
                                     bytes: nftnl_obj_get_u64(o, UInt16(NFTNL_OBJ_CTR_BYTES))))
        }
        guard case .complete = end else { return [] }
        return out
    }

    /// One request message (not a batch) in `family`.
    func build(_ type: nf_tables_msg_types, flags: UInt16, sequence: UInt32, family: TableFamily = .inet,
               payload: (UnsafeMutablePointer<nlmsghdr>) -> Void) -> [UInt8] {
        let header = nftnl_nlmsg_build_hdr(scratch.chars, UInt16(type.rawValue), UInt16(family.nfproto), flags, sequence)!
        payload(header)
        return Array(scratch.bytes(Int(header.pointee.nlmsg_len)))
    }
}
