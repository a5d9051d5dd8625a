#if canImport(Glibc)
import Glibc
#endif
import CNftnl
public import VirtPortCore

/// The packet a forward's first packet is at the `forward` hook, as far as a static check knows it:
/// after DNAT, to the guest, out of its bridge, conntrack state new with the DNAT status bit.
public struct ForwardedPacket: Sendable {
    public var family: Family
    public var proto: IPProto
    public var guest: IPAddress
    public var guestPort: UInt16
    /// The guest's bridge (its network's `<bridge name>`), nil when unknown.
    public var bridge: String?

    public init(family: Family, proto: IPProto, guest: IPAddress, guestPort: UInt16, bridge: String?) {
        self.family = family
        self.proto = proto
        self.guest = guest
        self.guestPort = guestPort
        self.bridge = bridge
    }
}

/// Whether a rule can match a `ForwardedPacket`, by evaluating the compares whose operands are
/// known (interface names, protocol, destination address and port, ct state/status) and treating
/// everything else (sets, xt matches, the client's address) as "may match". Best effort, for
/// doctor's static check: `.no` only when a compare is certainly false.
public enum RuleMatch: Sendable, Equatable {
    case no, maybe, yes
}

extension KernelRule {
    public func matches(_ p: ForwardedPacket) -> RuleMatch {
        let r = nftnl_rule_alloc()!
        defer { nftnl_rule_free(r) }
        let ok = message.withUnsafeBytes { nftnl_rule_nlmsg_parse(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: nlmsghdr.self), r) }
        guard ok >= 0, let it = nftnl_expr_iter_create(r) else { return .maybe }
        defer { nftnl_expr_iter_destroy(it) }
        // Register → the bytes it holds for this packet (nil: unknown).
        var regs: [UInt32: [UInt8]?] = [:]
        // Registers holding the input interface's name: the packet did not come from the guest's bridge.
        var notBridge = Set<UInt32>()
        var result = RuleMatch.yes
        func u32(_ e: OpaquePointer, _ a: Int) -> UInt32 { nftnl_expr_get_u32(e, UInt16(a)) }
        func data(_ e: OpaquePointer, _ a: Int) -> [UInt8] {
            var len: UInt32 = 0
            guard let ptr = nftnl_expr_get(e, UInt16(a), &len) else { return [] }
            return Array(UnsafeRawBufferPointer(start: ptr, count: Int(len)))
        }
        func name(_ s: String) -> [UInt8] {
            var b = Array(s.utf8)
            b += [UInt8](repeating: 0, count: max(0, 16 - b.count))
            return b
        }
        while let e = nftnl_expr_iter_next(it) {
            let kind = nftnl_expr_get_str(e, UInt16(NFTNL_EXPR_NAME)).map { String(cString: $0) } ?? ""
            switch kind {
            case "meta":
                guard nftnl_expr_is_set(e, UInt16(NFTNL_EXPR_META_DREG)) else { continue }
                let dreg = u32(e, NFTNL_EXPR_META_DREG)
                notBridge.remove(dreg)
                switch u32(e, NFTNL_EXPR_META_KEY) {
                case NFT_META_L4PROTO.rawValue: regs[dreg] = [p.proto.number]
                case NFT_META_NFPROTO.rawValue: regs[dreg] = [UInt8(p.family == .ipv4 ? NFPROTO_IPV4 : NFPROTO_IPV6)]
                case NFT_META_OIFNAME.rawValue: regs[dreg] = p.bridge.map(name)
                case NFT_META_IIFNAME.rawValue:
                    regs[dreg] = .some(nil)
                    if p.bridge != nil { notBridge.insert(dreg) }
                default: regs[dreg] = .some(nil)
                }
            case "payload":
                notBridge.remove(u32(e, NFTNL_EXPR_PAYLOAD_DREG))
                let dreg = u32(e, NFTNL_EXPR_PAYLOAD_DREG), base = u32(e, NFTNL_EXPR_PAYLOAD_BASE)
                let off = Int(u32(e, NFTNL_EXPR_PAYLOAD_OFFSET)), len = Int(u32(e, NFTNL_EXPR_PAYLOAD_LEN))
                var value: [UInt8]?
                if base == NFT_PAYLOAD_NETWORK_HEADER.rawValue {
                    let daddr = p.family == .ipv4 ? 16 : 24
                    if off >= daddr && off + len <= daddr + p.guest.bytes.count {
                        value = Array(p.guest.bytes[(off - daddr)..<(off - daddr + len)])
                    } else if p.family == .ipv4 && off == 9 && len == 1 {
                        value = [p.proto.number]
                    }
                } else if base == NFT_PAYLOAD_TRANSPORT_HEADER.rawValue && off == 2 && len == 2 {
                    value = [UInt8(p.guestPort >> 8), UInt8(p.guestPort & 0xff)]
                }
                regs[dreg] = .some(value)
            case "ct":
                notBridge.remove(u32(e, NFTNL_EXPR_CT_DREG))
                guard nftnl_expr_is_set(e, UInt16(NFTNL_EXPR_CT_DREG)) else { continue }
                let dreg = u32(e, NFTNL_EXPR_CT_DREG)
                switch u32(e, NFTNL_EXPR_CT_KEY) {
                case NFT_CT_STATE.rawValue: regs[dreg] = withUnsafeBytes(of: UInt32(8)) { Array($0) }  // new
                case NFT_CT_STATUS.rawValue: regs[dreg] = withUnsafeBytes(of: UInt32(0x20)) { Array($0) }  // dnat
                default: regs[dreg] = .some(nil)
                }
            case "bitwise":
                let sreg = u32(e, NFTNL_EXPR_BITWISE_SREG), dreg = u32(e, NFTNL_EXPR_BITWISE_DREG)
                let mask = data(e, NFTNL_EXPR_BITWISE_MASK), xor = data(e, NFTNL_EXPR_BITWISE_XOR)
                if case .some(.some(let v)) = regs[sreg], mask.count == v.count, xor.count == v.count {
                    regs[dreg] = zip(zip(v, mask), xor).map { ($0.0 & $0.1) ^ $1 }
                } else {
                    regs[dreg] = .some(nil)
                }
            case "cmp":
                let sreg = u32(e, NFTNL_EXPR_CMP_SREG), op = u32(e, NFTNL_EXPR_CMP_OP)
                let d = data(e, NFTNL_EXPR_CMP_DATA)
                if notBridge.contains(sreg), let bridge = p.bridge {
                    // iptables-nft compares the name and its NUL (or a prefix for `br+`); nft all 16 bytes.
                    let named = Array(d.prefix { $0 != 0 }) == Array(bridge.utf8)
                    if op == NFT_CMP_EQ.rawValue && named { return .no }
                    if !(op == NFT_CMP_NEQ.rawValue && named) { result = .maybe }
                    continue
                }
                guard case .some(.some(let v)) = regs[sreg], v.count >= d.count else { result = .maybe; continue }
                let equal = Array(v.prefix(d.count)) == d
                switch op {
                case NFT_CMP_EQ.rawValue: if !equal { return .no }
                case NFT_CMP_NEQ.rawValue: if equal { return .no }
                default: result = .maybe
                }
            case "immediate", "counter", "reject", "log", "limit", "quota":
                continue
            default:
                // lookup, match (xt), target, fib, nat…: not evaluated.
                if kind != "target" { result = .maybe }
            }
        }
        return result
    }
}
