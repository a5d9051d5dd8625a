#if canImport(Glibc)
import Glibc
#endif
import CNftnl
public import VirtPortCore

/// A packet of a forward as far as a static check knows it at one hook: its protocol, the
/// addresses and ports it certainly has, which side of the guest's bridge it is on, and its
/// conntrack state and status. Unknown fields make a compare "may match".
public struct PacketModel: Sendable {
    /// Where a packet is relative to the guest's bridge.
    public enum Side: Sendable { case bridge, notBridge, unknown }

    public var family: Family
    public var proto: IPProto
    public var source: IPAddress?
    public var destination: IPAddress?
    public var sourcePort: UInt16?
    public var destinationPort: UInt16?
    /// The guest's bridge (its network's `<bridge name>`), nil when unknown.
    public var bridge: String?
    public var input: Side = .unknown
    public var output: Side = .unknown
    /// `ct state` bit (8 new, 2 established), `ct status` bits, `ct direction`; nil unknown.
    public var ctState: UInt32?
    public var ctStatus: UInt32?
    public var ctDirection: UInt8?

    public init(family: Family, proto: IPProto) {
        self.family = family
        self.proto = proto
    }

    /// The first packet of a forwarded connection at the `forward` hook: after DNAT, to the guest,
    /// out through its bridge, ct new with the DNAT bit.
    public static func forwardOriginal(_ m: Mapping, guest: IPAddress, bridge: String?) -> PacketModel {
        var p = PacketModel(family: guest.family, proto: m.proto)
        p.destination = guest
        p.destinationPort = m.guestPortStart
        p.bridge = bridge
        p.input = .notBridge
        p.output = .bridge
        p.ctState = 8
        p.ctStatus = 0x20
        p.ctDirection = 0
        return p
    }

    /// The guest's answer at the `forward` hook: from the guest, in through its bridge, ct established.
    public static func forwardReply(_ m: Mapping, guest: IPAddress, bridge: String?) -> PacketModel {
        var p = PacketModel(family: guest.family, proto: m.proto)
        p.source = guest
        p.sourcePort = m.guestPortStart
        p.bridge = bridge
        p.input = .bridge
        p.output = .notBridge
        p.ctState = 2
        p.ctStatus = 0x20
        p.ctDirection = 1
        return p
    }

    /// The first packet at `prerouting` before DNAT: to the host port (and listen address, when
    /// the forward has one), from outside the bridge; ct new only after conntrack (priority > -200).
    public static func prerouting(_ m: Mapping, guest: IPAddress, bridge: String?, priority: Int32) -> PacketModel {
        var p = PacketModel(family: guest.family, proto: m.proto)
        p.destination = m.hostAddress
        p.destinationPort = m.hostPorts.start
        p.bridge = bridge
        p.input = .notBridge
        if priority > -200 {
            p.ctState = 8
            p.ctDirection = 0
        }
        return p
    }
}

/// Whether a rule can match a `PacketModel`: `.no` only when a compare is certainly false,
/// `.yes` when every compare was evaluated and true; sets, xt matches and unknown fields: `.maybe`.
public enum RuleMatch: Sendable, Equatable {
    case no, maybe, yes
}

extension KernelRule {
    public func matches(_ p: PacketModel) -> RuleMatch {
        let r = nftnl_rule_alloc()!
        defer { nftnl_rule_free(r) }
        let ok = message.withUnsafeBytes { nftnl_rule_nlmsg_parse(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: nlmsghdr.self), r) }
        guard ok >= 0, let it = nftnl_expr_iter_create(r) else { return .maybe }
        defer { nftnl_expr_iter_destroy(it) }
        /// What a register holds for this packet.
        enum Value {
            case known([UInt8])
            case unknown
            /// An interface name or index that is (`.bridge`) or is not (`.notBridge`) the bridge's.
            case interface(PacketModel.Side, index: Bool)
        }
        var regs: [UInt32: Value] = [:]
        var result = RuleMatch.yes
        func u32(_ e: OpaquePointer, _ a: Int) -> UInt32 { nftnl_expr_get_u32(e, UInt16(a)) }
        func data(_ e: OpaquePointer, _ a: Int) -> [UInt8] {
            var len: UInt32 = 0
            guard let ptr = nftnl_expr_get(e, UInt16(a), &len) else { return [] }
            return Array(UnsafeRawBufferPointer(start: ptr, count: Int(len)))
        }
        func hostOrder(_ v: UInt32?) -> Value { v.map { x in .known(withUnsafeBytes(of: x) { Array($0) }) } ?? .unknown }
        let bridgeIndex: UInt32 = p.bridge.map { if_nametoindex($0) } ?? 0
        func port(_ v: UInt16?) -> Value { v.map { .known([UInt8($0 >> 8), UInt8($0 & 0xff)]) } ?? .unknown }
        while let e = nftnl_expr_iter_next(it) {
            let kind = nftnl_expr_get_str(e, UInt16(NFTNL_EXPR_NAME)).map { String(cString: $0) } ?? ""
            switch kind {
            case "meta":
                guard nftnl_expr_is_set(e, UInt16(NFTNL_EXPR_META_DREG)) else { continue }
                let dreg = u32(e, NFTNL_EXPR_META_DREG)
                switch u32(e, NFTNL_EXPR_META_KEY) {
                case NFT_META_L4PROTO.rawValue: regs[dreg] = .known([p.proto.number])
                case NFT_META_NFPROTO.rawValue: regs[dreg] = .known([UInt8(p.family == .ipv4 ? NFPROTO_IPV4 : NFPROTO_IPV6)])
                case NFT_META_IIFNAME.rawValue: regs[dreg] = .interface(p.input, index: false)
                case NFT_META_OIFNAME.rawValue: regs[dreg] = .interface(p.output, index: false)
                case NFT_META_IIF.rawValue: regs[dreg] = .interface(p.input, index: true)
                case NFT_META_OIF.rawValue: regs[dreg] = .interface(p.output, index: true)
                default: regs[dreg] = .unknown
                }
            case "payload":
                let dreg = u32(e, NFTNL_EXPR_PAYLOAD_DREG), base = u32(e, NFTNL_EXPR_PAYLOAD_BASE)
                let off = Int(u32(e, NFTNL_EXPR_PAYLOAD_OFFSET)), len = Int(u32(e, NFTNL_EXPR_PAYLOAD_LEN))
                var value = Value.unknown
                if base == NFT_PAYLOAD_NETWORK_HEADER.rawValue {
                    let (saddr, daddr, size) = p.family == .ipv4 ? (12, 16, 4) : (8, 24, 16)
                    for (start, address) in [(saddr, p.source), (daddr, p.destination)] where off >= start && off + len <= start + size {
                        if let a = address { value = .known(Array(a.bytes[(off - start)..<(off - start + len)])) }
                    }
                    if p.family == .ipv4 && off == 9 && len == 1 { value = .known([p.proto.number]) }
                } else if base == NFT_PAYLOAD_TRANSPORT_HEADER.rawValue && len == 2 {
                    if off == 0 { value = port(p.sourcePort) }
                    if off == 2 { value = port(p.destinationPort) }
                }
                regs[dreg] = value
            case "ct":
                guard nftnl_expr_is_set(e, UInt16(NFTNL_EXPR_CT_DREG)) else { continue }
                let dreg = u32(e, NFTNL_EXPR_CT_DREG)
                switch u32(e, NFTNL_EXPR_CT_KEY) {
                case NFT_CT_STATE.rawValue: regs[dreg] = hostOrder(p.ctState)
                case NFT_CT_STATUS.rawValue: regs[dreg] = hostOrder(p.ctStatus)
                case NFT_CT_DIRECTION.rawValue: regs[dreg] = p.ctDirection.map { .known([$0]) } ?? .unknown
                default: regs[dreg] = .unknown
                }
            case "bitwise":
                let sreg = u32(e, NFTNL_EXPR_BITWISE_SREG), dreg = u32(e, NFTNL_EXPR_BITWISE_DREG)
                let mask = data(e, NFTNL_EXPR_BITWISE_MASK), xor = data(e, NFTNL_EXPR_BITWISE_XOR)
                if case .known(let v) = regs[sreg] ?? .unknown, mask.count == v.count, xor.count == v.count {
                    regs[dreg] = .known(zip(zip(v, mask), xor).map { ($0.0 & $0.1) ^ $1 })
                } else {
                    regs[dreg] = .unknown
                }
            case "cmp":
                let sreg = u32(e, NFTNL_EXPR_CMP_SREG), op = u32(e, NFTNL_EXPR_CMP_OP)
                let d = data(e, NFTNL_EXPR_CMP_DATA)
                let eq = op == NFT_CMP_EQ.rawValue, neq = op == NFT_CMP_NEQ.rawValue
                switch regs[sreg] ?? .unknown {
                case .known(let v) where v.count >= d.count && (eq || neq):
                    let equal = Array(v.prefix(d.count)) == d
                    if (eq && !equal) || (neq && equal) { return .no }
                case .interface(let side, let index) where side != .unknown && p.bridge != nil && (eq || neq):
                    // A name compares with its NUL (iptables-nft) or all 16 bytes (nft); an index as a u32.
                    let isBridge = index ? (bridgeIndex != 0 && d == withUnsafeBytes(of: bridgeIndex) { Array($0) })
                                         : Array(d.prefix { $0 != 0 }) == Array(p.bridge!.utf8)
                    if isBridge {
                        let equal = side == .bridge
                        if (eq && !equal) || (neq && equal) { return .no }
                    } else if side == .bridge {
                        // The bridge compared with another interface: certainly unequal.
                        if eq { return .no }
                    } else {
                        result = .maybe
                    }
                default:
                    result = .maybe
                }
            case "immediate", "counter", "reject", "log", "limit", "quota", "target":
                continue
            default:
                // lookup, match (xt), fib, nat…: not evaluated.
                result = .maybe
            }
        }
        return result
    }
}
