/// Reading netlink datagrams: message headers, attributes, and NLMSG_ERROR acknowledgements.
/// Plain Swift over bytes.
enum Netlink {
    static let headerLength = 16  // struct nlmsghdr
    static let nfgenmsgLength = 4  // struct nfgenmsg

    // nlmsg_type values of the netlink core.
    static let typeError: UInt16 = 2  // NLMSG_ERROR
    static let typeDone: UInt16 = 3  // NLMSG_DONE

    // nlmsg_flags.
    static let request: UInt16 = 0x1  // NLM_F_REQUEST
    static let multi: UInt16 = 0x2  // NLM_F_MULTI
    static let ack: UInt16 = 0x4  // NLM_F_ACK
    static let dumpInterrupted: UInt16 = 0x10  // NLM_F_DUMP_INTR
    static let excl: UInt16 = 0x200  // NLM_F_EXCL
    static let create: UInt16 = 0x400  // NLM_F_CREATE
    static let append: UInt16 = 0x800  // NLM_F_APPEND
    static let dump: UInt16 = 0x300  // NLM_F_DUMP
    static let capped: UInt16 = 0x100  // NLM_F_CAPPED (in an ack: the request was not echoed)
    static let ackTLVs: UInt16 = 0x200  // NLM_F_ACK_TLVS (in an ack: extended-ack attributes follow)

    /// NFNL_SUBSYS_NFTABLES << 8: nf_tables message types are this plus NFT_MSG_*.
    static let nftablesSubsystem: UInt16 = 10 << 8

    static func align(_ n: Int) -> Int { (n + 3) & ~3 }
}

/// One message inside a datagram.
struct NetlinkMessage {
    var length: Int
    var type: UInt16
    var flags: UInt16
    var sequence: UInt32
    /// Where the message (its header) starts in the datagram.
    var offset: Int

    /// The messages of `datagram`; stops at the first truncated header.
    static func split(_ datagram: [UInt8]) -> [NetlinkMessage] {
        var out: [NetlinkMessage] = []
        var at = 0
        while at + Netlink.headerLength <= datagram.count {
            let length = Int(datagram.u32(at))
            guard length >= Netlink.headerLength, at + length <= datagram.count else { break }
            out.append(NetlinkMessage(length: length, type: datagram.u16(at + 4), flags: datagram.u16(at + 6),
                                      sequence: datagram.u32(at + 8), offset: at))
            at += Netlink.align(length)
        }
        return out
    }
}

/// A parsed NLMSG_ERROR: success (errno 0) or the failure of the request with `sequence`.
struct NetlinkAck: Equatable {
    var sequence: UInt32
    /// Positive errno, 0 for success.
    var errno: Int32
    /// NLMSGERR_ATTR_MSG.
    var message: String?
    /// NLMSGERR_ATTR_OFFS: offset of the offending attribute from the start of the request's header.
    var attributeOffset: Int?

    init(sequence: UInt32, errno: Int32, message: String? = nil, attributeOffset: Int? = nil) {
        self.sequence = sequence
        self.errno = errno
        self.message = message
        self.attributeOffset = attributeOffset
    }

    /// Parses the NLMSG_ERROR `message` of `datagram`.
    init?(_ message: NetlinkMessage, in datagram: [UInt8]) {
        let payload = message.offset + Netlink.headerLength
        // struct nlmsgerr { int error; struct nlmsghdr msg; }, then the request's payload unless capped.
        guard message.type == Netlink.typeError, message.length >= Netlink.headerLength + 4 + Netlink.headerLength
        else { return nil }
        let error = Int32(bitPattern: datagram.u32(payload))
        let request = payload + 4
        self.init(sequence: datagram.u32(request + 8), errno: -error)
        guard message.flags & Netlink.ackTLVs != 0 else { return }
        let requestLength = Int(datagram.u32(request))
        let tlvStart = message.flags & Netlink.capped != 0
            ? request + Netlink.headerLength : request + Netlink.align(requestLength)
        let end = message.offset + message.length
        guard tlvStart <= end else { return }
        for attribute in NetlinkAttribute.list(datagram, tlvStart..<end) {
            switch attribute.type {
            case 1:  // NLMSGERR_ATTR_MSG
                let text = datagram[attribute.value].prefix { $0 != 0 }
                self.message = String(decoding: text, as: UTF8.self)
            case 2 where attribute.value.count >= 4:  // NLMSGERR_ATTR_OFFS
                self.attributeOffset = Int(datagram.u32(attribute.value.lowerBound))
            default: break
            }
        }
    }
}

/// One netlink attribute (struct nlattr): where it starts, its type, and its value's bytes.
struct NetlinkAttribute {
    var offset: Int
    var type: UInt16
    var value: Range<Int>
    var end: Int { offset + Netlink.align(4 + value.count) }

    /// The attributes laid end to end in `range` of `bytes`.
    static func list(_ bytes: [UInt8], _ range: Range<Int>) -> [NetlinkAttribute] {
        var out: [NetlinkAttribute] = []
        var at = range.lowerBound
        while at + 4 <= range.upperBound {
            let length = Int(bytes.u16(at))
            guard length >= 4, at + length <= range.upperBound else { break }
            out.append(NetlinkAttribute(offset: at, type: bytes.u16(at + 2) & 0x3fff, value: at + 4..<at + length))
            at += Netlink.align(length)
        }
        return out
    }
}

extension Array where Element == UInt8 {
    /// Host-order integers, as netlink headers and attributes carry them.
    func u16(_ at: Int) -> UInt16 { withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt16.self) } }
    func u32(_ at: Int) -> UInt32 { withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self) } }
}
