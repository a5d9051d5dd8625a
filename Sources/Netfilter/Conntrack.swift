#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import POSIX
public import VirtPortCore

/// ctnetlink (NFNL_SUBSYS_CTNETLINK) requests, built by hand: the same NETLINK_NETFILTER socket
/// nf_tables uses carries them, so deleting the connection tracking entries of a removed forward
/// costs no new socket and no library. Plain bytes, so unit tests check them field by field.
enum Conntrack {
    static let subsystem: UInt16 = 1 << 8  // NFNL_SUBSYS_CTNETLINK << 8
    static let delete: UInt16 = 2  // IPCTNL_MSG_CT_DELETE
    // enum ctattr_type / ctattr_tuple / ctattr_ip / ctattr_l4proto / ctattr_filter.
    static let tupleOriginal: UInt16 = 1  // CTA_TUPLE_ORIG
    static let tupleReply: UInt16 = 2  // CTA_TUPLE_REPLY
    static let filter: UInt16 = 25  // CTA_FILTER
    static let tupleIP: UInt16 = 1  // CTA_TUPLE_IP
    static let tupleProto: UInt16 = 2  // CTA_TUPLE_PROTO
    static let protoNumber: UInt16 = 1  // CTA_PROTO_NUM
    static let protoSourcePort: UInt16 = 2  // CTA_PROTO_SRC_PORT
    static let protoDestinationPort: UInt16 = 3  // CTA_PROTO_DST_PORT
    static let filterOriginalFlags: UInt16 = 1  // CTA_FILTER_ORIG_FLAGS
    static let filterReplyFlags: UInt16 = 2  // CTA_FILTER_REPLY_FLAGS
    // CTA_FILTER_FLAG(…): which tuple fields a filter compares.
    static let matchSource: UInt32 = 1 << 0  // CTA_IP_SRC
    static let matchProto: UInt32 = 1 << 3  // CTA_PROTO_NUM
    static let matchSourcePort: UInt32 = 1 << 4  // CTA_PROTO_SRC_PORT
    static let matchDestinationPort: UInt32 = 1 << 5  // CTA_PROTO_DST_PORT
    static let nested: UInt16 = 0x8000  // NLA_F_NESTED

    /// One connection's original tuple.
    struct Tuple: Hashable, Sendable {
        var source: IPAddress
        var destination: IPAddress
        var proto: UInt8
        var sourcePort: UInt16
        var destinationPort: UInt16
    }

    static func attribute(_ type: UInt16, _ payload: [UInt8]) -> [UInt8] {
        let length = 4 + payload.count
        return le16(UInt16(length)) + le16(type) + payload + [UInt8](repeating: 0, count: Netlink.align(length) - length)
    }

    static func nest(_ type: UInt16, _ parts: [UInt8]...) -> [UInt8] {
        attribute(type | nested, parts.flatMap { $0 })
    }

    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
    static func le32(_ v: UInt32) -> [UInt8] {
        [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v >> 16),
         UInt8(truncatingIfNeeded: v >> 24)]
    }

    /// CTA_IP_V4_SRC/DST = 1/2, CTA_IP_V6_SRC/DST = 3/4.
    static func addressType(_ address: IPAddress, source: Bool) -> UInt16 {
        (address.family == .ipv4 ? 1 : 3) + (source ? 0 : 1)
    }

    /// A whole message: nlmsghdr, nfgenmsg (family, version 0, res_id 0), attributes.
    static func message(_ type: UInt16, family: Family, flags: UInt16, sequence: UInt32, _ attributes: [UInt8]) -> [UInt8] {
        let length = UInt32(Netlink.headerLength + Netlink.nfgenmsgLength + attributes.count)
        return le32(length) + le16(subsystem | type) + le16(flags) + le32(sequence) + le32(0)
            + [UInt8(family == .ipv4 ? AF_INET : AF_INET6), 0, 0, 0] + attributes
    }

    static let get: UInt16 = 1  // IPCTNL_MSG_CT_GET
    static let new: UInt16 = 0  // IPCTNL_MSG_CT_NEW (each entry of a dump)
    static let zone: UInt16 = 18  // CTA_ZONE

    /// IPCTNL_MSG_CT_GET with NLM_F_DUMP: every entry of `family` in the socket's namespace.
    static func dump(family: Family, sequence: UInt32) -> [UInt8] {
        message(get, family: family, flags: Netlink.request | Netlink.dump, sequence: sequence, [])
    }

    static let status: UInt16 = 3  // CTA_STATUS
    /// IPS_DST_NAT: the entry's destination is translated (a DNAT took the connection).
    static let statusDestinationNAT: UInt32 = 1 << 5

    /// An entry of a dump: its original tuple, zone (0: the default zone) and status bits
    /// (IPS_*). nil when the message lacks an original tuple with both addresses, a protocol and
    /// (for TCP, UDP, SCTP…) ports.
    static func parseEntry(_ message: [UInt8], offset: Int, length: Int) -> (tuple: Tuple, zone: UInt16, status: UInt32)? {
        message.withUnsafeBytes { raw -> (tuple: Tuple, zone: UInt16, status: UInt32)? in
            let start = offset + Netlink.headerLength + Netlink.nfgenmsgLength
            guard start <= offset + length, offset + length <= raw.count else { return nil }
            var source: IPAddress?, destination: IPAddress?
            var proto: UInt8?, sourcePort: UInt16?, destinationPort: UInt16?
            var zoneID: UInt16 = 0
            var statusBits: UInt32 = 0
            RuleAttributes.each(raw, start..<(offset + length)) { type, value in
                if type == zone, value.count >= 2 {
                    zoneID = UInt16(raw[value.lowerBound]) << 8 | UInt16(raw[value.lowerBound + 1])
                }
                if type == status, value.count >= 4 {
                    statusBits = raw[value].prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                }
                guard type == tupleOriginal else { return }
                RuleAttributes.each(raw, value) { type, value in
                    if type == tupleIP {
                        RuleAttributes.each(raw, value) { type, value in
                            let bytes = Array(raw[value])
                            let address = (1...4).contains(type) ? IPAddress(bytes: bytes) : nil
                            if type == 1 || type == 3 { source = address } else if type == 2 || type == 4 { destination = address }
                        }
                    } else if type == tupleProto {
                        RuleAttributes.each(raw, value) { type, value in
                            switch (type, value.count) {
                            case (protoNumber, 1...): proto = raw[value.lowerBound]
                            case (protoSourcePort, 2...):
                                sourcePort = UInt16(raw[value.lowerBound]) << 8 | UInt16(raw[value.lowerBound + 1])
                            case (protoDestinationPort, 2...):
                                destinationPort = UInt16(raw[value.lowerBound]) << 8 | UInt16(raw[value.lowerBound + 1])
                            default: break
                            }
                        }
                    }
                }
            }
            guard let source, let destination, let proto, let sourcePort, let destinationPort else { return nil }
            return (Tuple(source: source, destination: destination, proto: proto, sourcePort: sourcePort,
                          destinationPort: destinationPort), zoneID, statusBits)
        }
    }

    /// IPCTNL_MSG_CT_DELETE of the entry whose original tuple is `tuple` (in conntrack zone `zone`,
    /// 0: the default): one hash lookup in the kernel.
    static func deleteByTuple(_ tuple: Tuple, zone zoneID: UInt16 = 0, sequence: UInt32) -> [UInt8] {
        let ip = nest(tupleIP, attribute(addressType(tuple.source, source: true), tuple.source.bytes),
                      attribute(addressType(tuple.destination, source: false), tuple.destination.bytes))
        let proto = nest(tupleProto, attribute(protoNumber, [tuple.proto]),
                         attribute(protoSourcePort, be16(tuple.sourcePort)),
                         attribute(protoDestinationPort, be16(tuple.destinationPort)))
        return message(delete, family: tuple.source.family, flags: Netlink.request | Netlink.ack, sequence: sequence,
                       nest(tupleOriginal, ip, proto) + (zoneID == 0 ? [] : attribute(zone, be16(zoneID))))
    }

    /// IPCTNL_MSG_CT_DELETE with CTA_FILTER on the original direction's protocol and destination port.
    static func deleteByDestinationPort(_ port: UInt16, proto: UInt8, family: Family, sequence: UInt32) -> [UInt8] {
        let tuple = nest(tupleOriginal, nest(tupleProto, attribute(protoNumber, [proto]),
                                             attribute(protoDestinationPort, be16(port))))
        let filterFlags = nest(filter, attribute(filterOriginalFlags, le32(matchProto | matchDestinationPort)),
                               attribute(filterReplyFlags, le32(0)))
        return message(delete, family: family, flags: Netlink.request | Netlink.ack, sequence: sequence, tuple + filterFlags)
    }

    /// IPCTNL_MSG_CT_DELETE without a tuple but with CTA_FILTER: the kernel walks its whole table and
    /// deletes the entries whose reply (or, with `original`, original) direction has this source
    /// address (and protocol and source port, when given). Linear in the table's size.
    static func deleteBySource(_ address: IPAddress, proto: UInt8?, port: UInt16?, original: Bool,
                               sequence: UInt32) -> [UInt8] {
        var flags = matchSource
        var protoParts: [UInt8] = []
        if let proto {
            flags |= matchProto
            protoParts += attribute(protoNumber, [proto])
            if let port {
                flags |= matchSourcePort
                protoParts += attribute(protoSourcePort, be16(port))
            }
        }
        let ip = nest(tupleIP, attribute(addressType(address, source: true), address.bytes))
        let tuple = protoParts.isEmpty ? nest(original ? tupleOriginal : tupleReply, ip)
            : nest(original ? tupleOriginal : tupleReply, ip, nest(tupleProto, protoParts))
        let filterFlags = nest(filter, attribute(filterOriginalFlags, le32(original ? flags : 0)),
                               attribute(filterReplyFlags, le32(original ? 0 : flags)))
        return message(delete, family: address.family, flags: Netlink.request | Netlink.ack, sequence: sequence,
                       tuple + filterFlags)
    }
}

/// The flow sets' keys, read before the table goes (`NetfilterSession.flowRecord`).
public struct FlowRecord: Sendable {
    var sets: [String: [[UInt8]]] = [:]
    public init() {}
}

/// What deleting connection tracking entries did.
public struct ConntrackCleanup: Sendable, Equatable {
    /// Entries deleted by tuple.
    public var deleted = 0
    /// Filtered walks of the whole table (a flow set was full or missing).
    public var walks = 0
    public init() {}
}

extension NetfilterSession {
    /// Deletes the connection tracking entries the DNAT of `elements` created, so the next packet
    /// of an ongoing flow meets the current maps (a new holder of the port, or nothing) instead
    /// of following the old translation. Reads `flows4`/`flows6` (only the connections virtport's
    /// table translated), deletes the matching entries by tuple and their set elements. A set
    /// that is full or absent (a table from an older virtport) makes it walk the conntrack table
    /// instead, filtered on the guest address and port. Entries already gone are not an error.
    ///
    /// Wraps NFT_MSG_GETSETELEM, IPCTNL_MSG_CT_DELETE, NFT_MSG_DELSETELEM; needs CAP_NET_ADMIN.
    @discardableResult
    public func forgetFlows(of elements: [ForwardElement]) throws(NetfilterError) -> ConntrackCleanup {
        try forgetFlows(of: elements, record: nil)
    }

    /// The flow record as it is now (both families; an absent set is left out): for a caller about
    /// to delete the table (`uninstall`), which then passes it to `forgetFlows(of:record:)`.
    public func flowRecord() -> FlowRecord {
        var out = FlowRecord()
        for set in FlowSet.all {
            if let recorded = try? dumpSet(set.name) { out.sets[set.name] = recorded.map(\.key) }
        }
        return out
    }

    /// `forgetFlows(of:)` with the record read earlier (nil: read it now). With a given record the
    /// set elements are not deleted (the table is gone).
    @discardableResult
    public func forgetFlows(of elements: [ForwardElement], record: FlowRecord?) throws(NetfilterError) -> ConntrackCleanup {
        var result = ConntrackCleanup()
        if elements.isEmpty { return result }
        for set in FlowSet.all {
            let mine = elements.filter { $0.family == set.family }
            if mine.isEmpty { continue }
            let recorded = try forgetRecordedFlows(set, record: record, what: "", result: &result) { flow in
                mine.contains(where: flow.created(by:))
            }
            if !recorded {
                // Cannot trust the record: walk the table once per guest address and port.
                try forgetFlowsByWalking(mine)
                result.walks += 1
            }
        }
        return result
    }

    /// The flows `set` recorded (`record`, or the set read now) that `matching` takes: their
    /// connection tracking entries deleted by tuple, then their record elements (best effort: an
    /// element that expired meanwhile aborts nothing that matters; the set's timeout collects what
    /// is left; none with a given record: the table is gone). false, and nothing done, when the
    /// record cannot be trusted (the set full or absent): the caller walks the table its own way.
    /// `what` names the entries in the operation ("" or "filtered clients").
    func forgetRecordedFlows(_ set: FlowSet, record: FlowRecord?, what: String, result: inout ConntrackCleanup,
                             matching: (Conntrack.Tuple) -> Bool) throws(NetfilterError) -> Bool {
        var recorded: [KernelElement]? = nil
        if let record {
            recorded = record.sets[set.name].map { $0.map { KernelElement(key: $0, data: [], flags: 0) } }
        } else {
            do { recorded = try dumpSet(set.name) } catch where error.isMissingObject {}
        }
        guard let recorded, recorded.count < Int(FlowSet.capacity) else { return false }
        var byTuple: [Conntrack.Tuple: [UInt8]] = [:]
        for element in recorded {
            guard let flow = set.decode(element.key), matching(flow) else { continue }
            byTuple[flow] = element.key
        }
        if byTuple.isEmpty { return true }
        result.deleted += try conntrackRequests(byTuple.keys.map { Conntrack.deleteByTuple($0, sequence: takeSequence()) },
                                                operation: "delete conntrack entries of " + (what.isEmpty ? set.name : "\(what) (\(set.name))"))
        if record != nil { return true }
        _ = try? execute { batch in
            ElementMessages.append(to: &batch, table: table, set: set.name, adding: false,
                                   byTuple.values.map { (key: $0, data: nil, flags: UInt32(0)) },
                                   operation: .object("delete elements from set \(set.name)"))
        }
        return true
    }

    /// `forgetFlows(of:)` without the record (the table was rebuilt or deleted): one filtered walk
    /// of the conntrack table per guest address, port and protocol.
    public func forgetFlowsByWalking(_ elements: [ForwardElement]) throws(NetfilterError) {
        var seen = Set<[UInt8]>()
        for e in elements where seen.insert(e.guestAddress.bytes + Conntrack.be16(e.guestPort) + [e.proto.number]).inserted {
            try conntrackRequests([Conntrack.deleteBySource(e.guestAddress, proto: e.proto.number, port: e.guestPort,
                                                            original: false, sequence: takeSequence())],
                                  operation: "delete conntrack entries of \(e.guestAddress) port \(e.guestPort)")
        }
    }

    /// Deletes the entries whose original direction goes to `port` (`proto`, `family`), whatever
    /// their translation: what a flow left while no forward held the port (its packets were
    /// tracked untranslated) so that its next packet meets the forward just added. One filtered
    /// walk of the conntrack table per port. Wraps IPCTNL_MSG_CT_DELETE with CTA_FILTER.
    public func forgetFlows(toHostPort port: UInt16, proto: IPProto, family: Family) throws(NetfilterError) {
        try forgetFlows(toHostPorts: [(port, proto, family)])
    }

    /// `forgetFlows(toHostPort:proto:family:)` for several ports. A filtered walk visits every
    /// bucket and every entry of the host's conntrack table, all namespaces' (measured: 0.17 ms
    /// with an empty table of 262,144 buckets, 8-9 ms with 50,000 entries elsewhere). So the first
    /// port is walked and timed (the thread's CPU time); when walking the rest would cost more than reading the table once
    /// (`dumpIsCheaper`: a dump costs about a walk plus 9 ms), the rest go by one dump per family
    /// and deletes by tuple, else by walks whose requests share one datagram. The same entries go
    /// either way: original direction's protocol and destination port, any translation, any zone.
    public func forgetFlows(toHostPorts ports: [(port: UInt16, proto: IPProto, family: Family)]) throws(NetfilterError) {
        guard let first = ports.first else { return }
        // The walk runs in this thread's system call: its CPU time, unlike the clock, leaves out
        // time the thread spent preempted on a busy machine.
        let started = ThreadCPUClock.micros()
        try conntrackRequests([Conntrack.deleteByDestinationPort(first.port, proto: first.proto.number, family: first.family,
                                                                 sequence: takeSequence())],
                              operation: "delete conntrack entries to \(first.proto.rawValue) port \(first.port)")
        let rest = Array(ports.dropFirst())
        if rest.isEmpty { return }
        if Self.dumpIsCheaper(walkMicros: ThreadCPUClock.micros() - started, remaining: rest.count) {
            try forgetFlowsByDump(rest)
            return
        }
        var requests: [[UInt8]] = []
        requests.reserveCapacity(rest.count)
        for p in rest {
            requests.append(Conntrack.deleteByDestinationPort(p.port, proto: p.proto.number, family: p.family,
                                                              sequence: takeSequence()))
        }
        try conntrackRequests(requests, operation: "delete conntrack entries to \(rest.count) released ports")
    }

    /// Whether one dump of the conntrack table (about a walk plus 9 ms: 8.8 ms with an empty table
    /// where a walk took 0.17 ms, 12-16 ms with 50,000 entries where a walk took 8-9 ms) costs
    /// less than `remaining` more walks like the one that took `walkMicros`.
    static func dumpIsCheaper(walkMicros: Int64, remaining: Int) -> Bool {
        Int64(remaining) * walkMicros > walkMicros + 9_000
    }

    /// `forgetFlows(toHostPorts:)` by one dump per family and deletes by tuple.
    func forgetFlowsByDump(_ ports: [(port: UInt16, proto: IPProto, family: Family)]) throws(NetfilterError) {
        var requests: [[UInt8]] = []
        for family in [Family.ipv4, .ipv6] where ports.contains(where: { $0.family == family }) {
            let wanted = ports.filter { $0.family == family }
            try eachConntrackEntry(family: family) { entry in
                guard wanted.contains(where: { $0.proto.number == entry.tuple.proto && $0.port == entry.tuple.destinationPort })
                else { return }
                requests.append(Conntrack.deleteByTuple(entry.tuple, zone: entry.zone, sequence: takeSequence()))
            }
        }
        if requests.isEmpty { return }
        try conntrackRequests(requests, operation: "delete conntrack entries to \(ports.count) released ports")
    }

    /// One IPCTNL_MSG_CT_GET dump of `family`'s connection tracking table (the socket's
    /// namespace): `body` sees every entry with an original tuple (`Conntrack.parseEntry`).
    func eachConntrackEntry(family: Family, _ body: ((tuple: Conntrack.Tuple, zone: UInt16, status: UInt32)) -> Void)
        throws(NetfilterError) {
        let sequence = takeSequence()
        let operation = "list conntrack entries (\(family.rawValue))"
        try transport.send(Conntrack.dump(family: family, sequence: sequence))
        var done = false
        while !done {
            guard let reply = try transport.receive(timeout: BatchExchange.replyTimeout) else {
                throw NetfilterError(errno: ETIMEDOUT, operation: operation)
            }
            for message in NetlinkMessage.split(reply) where message.sequence == sequence {
                switch message.type {
                case Netlink.typeDone:
                    done = true
                case Netlink.typeError:
                    guard let ack = NetlinkAck(message, in: reply) else { continue }
                    if ack.errno != 0 { throw NetfilterError(errno: ack.errno, operation: operation, detail: ack.message) }
                    done = true
                case Conntrack.subsystem | Conntrack.new:
                    if let entry = Conntrack.parseEntry(reply, offset: message.offset, length: message.length) { body(entry) }
                default:
                    continue
                }
            }
        }
    }

    /// Deletes every connection tracking entry to or from `address` (a guard removed it from a
    /// port): two filtered walks of the table. Wraps IPCTNL_MSG_CT_DELETE with CTA_FILTER.
    public func forgetFlows(of address: IPAddress) throws(NetfilterError) {
        try conntrackRequests([
            Conntrack.deleteBySource(address, proto: nil, port: nil, original: true, sequence: takeSequence()),
            Conntrack.deleteBySource(address, proto: nil, port: nil, original: false, sequence: takeSequence()),
        ], operation: "delete conntrack entries of \(address)")
    }

    /// Sends ctnetlink requests (each with NLM_F_ACK) in datagrams of up to 64 KiB and waits for
    /// every ack. Returns how many succeeded; ENOENT (already gone) counts as neither.
    @discardableResult
    func conntrackRequests(_ requests: [[UInt8]], operation: String) throws(NetfilterError) -> Int {
        var done = 0
        var start = 0
        while start < requests.count {
            var datagram: [UInt8] = []
            var pending = Set<UInt32>()
            var end = start
            while end < requests.count, datagram.isEmpty || datagram.count + requests[end].count <= 60 * 1024 {
                datagram += requests[end]
                pending.insert(requests[end].u32(8))
                end += 1
            }
            try transport.send(datagram)
            while !pending.isEmpty {
                guard let reply = try transport.receive(timeout: BatchExchange.replyTimeout) else {
                    throw NetfilterError(errno: ETIMEDOUT, operation: operation)
                }
                for message in NetlinkMessage.split(reply) where pending.contains(message.sequence) {
                    guard let ack = NetlinkAck(message, in: reply) else { continue }
                    pending.remove(message.sequence)
                    switch ack.errno {
                    case 0: done += 1
                    case ENOENT: break
                    default: throw NetfilterError(errno: ack.errno, operation: operation, detail: ack.message)
                    }
                }
            }
            start = end
        }
        return done
    }
}
