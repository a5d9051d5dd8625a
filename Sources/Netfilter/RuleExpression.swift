#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import VirtPortCore

/// The nf_tables expressions virtport's rules are made of, as plain values; `build` turns one into
/// a libnftnl expression. Registers are numbered as on the wire (see `register(word:)`).
enum RuleExpression: Equatable {
    /// `meta KEY` into `dreg`.
    case meta(nft_meta_keys, dreg: UInt32)
    /// Compare `data` with the register.
    case cmp(sreg: UInt32, op: nft_cmp_ops, data: [UInt8])
    /// Load `length` bytes at `offset` of header `base` into `dreg`.
    case payload(base: nft_payload_bases, offset: UInt32, length: UInt32, dreg: UInt32)
    /// `fib daddr type` into `dreg`.
    case fibDaddrType(dreg: UInt32)
    /// `ct KEY` into `dreg`.
    case ct(nft_ct_keys, dreg: UInt32)
    /// `reg = (reg & mask) ^ xor`.
    case bitwise(reg: UInt32, mask: [UInt8], xor: [UInt8])
    /// Set/map lookup; `dreg` nil for a plain set.
    case lookup(set: String, sreg: UInt32, dreg: UInt32?)
    /// `dnat FAMILY to` address from `addressReg`, port from `portReg`.
    case dnat(family: Family, addressReg: UInt32, portReg: UInt32)
    case masquerade
    /// An x_tables match through nft_compat (what iptables-nft writes for `-m NAME`): `info` is the
    /// match's struct, XT_ALIGNed, exactly as iptables fills it.
    case match(name: String, revision: UInt32, info: [UInt8])
    case counter
    /// `accept`: the verdict register set to NF_ACCEPT.
    case accept
    /// `drop`.
    case drop
    /// `jump CHAIN`.
    case jump(String)
    /// `return` (to the chain that jumped here).
    case `return`
    /// `KEY != @set`: an inverted set lookup (NFT_LOOKUP_F_INV).
    case lookupNot(set: String, sreg: UInt32)
    /// `counter name KEY map @map`: the named counter the object map gives for the key.
    case objrefMap(map: String, sreg: UInt32)
    /// `add @set { KEY }` from the data path (the set has NFT_SET_EVAL, "dynamic").
    case dynsetAdd(set: String, sreg: UInt32)

    /// The expression's kernel name (`NFTA_EXPR_NAME`), as a rule dump gives it back.
    var kernelName: String {
        switch self {
        case .meta: "meta"
        case .cmp: "cmp"
        case .payload: "payload"
        case .fibDaddrType: "fib"
        case .ct: "ct"
        case .bitwise: "bitwise"
        case .lookup: "lookup"
        case .dnat: "nat"
        case .masquerade: "masq"
        case .match: "match"
        case .counter: "counter"
        case .accept, .drop, .jump, .return: "immediate"
        case .lookupNot: "lookup"
        case .objrefMap: "objref"
        case .dynsetAdd: "dynset"
        }
    }

    /// A fresh libnftnl expression; the caller hands it to a rule (which then owns it).
    func build() -> OpaquePointer {
        switch self {
        case .meta(let key, let dreg):
            let e = nftnl_expr_alloc("meta")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_META_KEY), key.rawValue)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_META_DREG), dreg)
            return e
        case .cmp(let sreg, let op, let data):
            let e = nftnl_expr_alloc("cmp")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CMP_SREG), sreg)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CMP_OP), op.rawValue)
            data.withUnsafeBytes { _ = nftnl_expr_set(e, UInt16(NFTNL_EXPR_CMP_DATA), $0.baseAddress, UInt32($0.count)) }
            return e
        case .payload(let base, let offset, let length, let dreg):
            let e = nftnl_expr_alloc("payload")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_DREG), dreg)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_BASE), base.rawValue)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_OFFSET), offset)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_PAYLOAD_LEN), length)
            return e
        case .fibDaddrType(let dreg):
            let e = nftnl_expr_alloc("fib")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_FIB_DREG), dreg)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_FIB_RESULT), NFT_FIB_RESULT_ADDRTYPE.rawValue)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_FIB_FLAGS), NFTA_FIB_F_DADDR.rawValue)
            return e
        case .ct(let key, let dreg):
            let e = nftnl_expr_alloc("ct")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CT_KEY), key.rawValue)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_CT_DREG), dreg)
            return e
        case .bitwise(let reg, let mask, let xor):
            let e = nftnl_expr_alloc("bitwise")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_BITWISE_SREG), reg)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_BITWISE_DREG), reg)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_BITWISE_LEN), UInt32(mask.count))
            mask.withUnsafeBytes { _ = nftnl_expr_set(e, UInt16(NFTNL_EXPR_BITWISE_MASK), $0.baseAddress, UInt32($0.count)) }
            xor.withUnsafeBytes { _ = nftnl_expr_set(e, UInt16(NFTNL_EXPR_BITWISE_XOR), $0.baseAddress, UInt32($0.count)) }
            return e
        case .lookup(let set, let sreg, let dreg):
            let e = nftnl_expr_alloc("lookup")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_SREG), sreg)
            if let dreg { nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_DREG), dreg) }
            nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_LOOKUP_SET), set)
            return e
        case .dnat(let family, let addressReg, let portReg):
            let e = nftnl_expr_alloc("nat")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_NAT_TYPE), NFT_NAT_DNAT.rawValue)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_NAT_FAMILY), UInt32(family == .ipv4 ? NFPROTO_IPV4 : NFPROTO_IPV6))
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_NAT_REG_ADDR_MIN), addressReg)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_NAT_REG_PROTO_MIN), portReg)
            return e
        case .masquerade:
            return nftnl_expr_alloc("masq")!
        case .match(let name, let revision, let info):
            let e = nftnl_expr_alloc("match")!
            nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_MT_NAME), name)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_MT_REV), revision)
            // libnftnl keeps (and later frees) this pointer instead of copying it: hand it a malloc'ed copy.
            let data = malloc(max(info.count, 1))!
            info.withUnsafeBytes { data.copyMemory(from: $0.baseAddress!, byteCount: info.count) }
            nftnl_expr_set(e, UInt16(NFTNL_EXPR_MT_INFO), data, UInt32(info.count))
            return e
        case .counter:
            return nftnl_expr_alloc("counter")!
        case .accept:
            let e = nftnl_expr_alloc("immediate")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), UInt32(NFT_REG_VERDICT.rawValue))
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(NF_ACCEPT))
            return e
        case .drop:
            let e = nftnl_expr_alloc("immediate")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), UInt32(NFT_REG_VERDICT.rawValue))
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(NF_DROP))
            return e
        case .jump(let chain):
            let e = nftnl_expr_alloc("immediate")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), UInt32(NFT_REG_VERDICT.rawValue))
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: NFT_JUMP.rawValue))
            nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_IMM_CHAIN), chain)
            return e
        case .return:
            let e = nftnl_expr_alloc("immediate")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_DREG), UInt32(NFT_REG_VERDICT.rawValue))
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: NFT_RETURN.rawValue))
            return e
        case .lookupNot(let set, let sreg):
            let e = nftnl_expr_alloc("lookup")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_SREG), sreg)
            nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_LOOKUP_SET), set)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_LOOKUP_FLAGS), NFT_LOOKUP_F_INV.rawValue)
            return e
        case .objrefMap(let map, let sreg):
            let e = nftnl_expr_alloc("objref")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_OBJREF_SET_SREG), sreg)
            nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_OBJREF_SET_NAME), map)
            return e
        case .dynsetAdd(let set, let sreg):
            let e = nftnl_expr_alloc("dynset")!
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_DYNSET_SREG_KEY), sreg)
            nftnl_expr_set_u32(e, UInt16(NFTNL_EXPR_DYNSET_OP), UInt32(NFT_DYNSET_OP_ADD.rawValue))
            nftnl_expr_set_str(e, UInt16(NFTNL_EXPR_DYNSET_SET_NAME), set)
            return e
        }
    }
}

extension RuleExpression {
    /// `meta nfproto ipv4|ipv6`: the dependency nft adds in an inet table, so a v4 map only ever
    /// sees v4 packets.
    static func nfproto(_ family: Family) -> [RuleExpression] {
        [.meta(NFT_META_NFPROTO, dreg: register(word: 0)),
         .cmp(sreg: register(word: 0), op: NFT_CMP_EQ, data: [UInt8(family == .ipv4 ? NFPROTO_IPV4 : NFPROTO_IPV6)])]
    }

    /// `fib daddr type local`: the destination is one of this host's addresses.
    /// `ip daddr != 127.0.0.0/8` or `ip6 daddr != ::1`.
    static func notLoopback(_ family: Family) -> [RuleExpression] {
        let reg = register(word: 0)
        switch family {
        case .ipv4:
            // The first byte only, as nft itself encodes `!= 127.0.0.0/8`: a ruleset saved with
            // `nft list` and loaded back holds the same expressions (`skeletonIsIntact`).
            return [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 16, length: 1, dreg: reg),
                    .cmp(sreg: reg, op: NFT_CMP_NEQ, data: [127])]
        case .ipv6:
            return [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 24, length: 16, dreg: reg),
                    .cmp(sreg: reg, op: NFT_CMP_NEQ, data: [UInt8](repeating: 0, count: 15) + [1])]
        }
    }

    static let fibLocal: [RuleExpression] = [
        .fibDaddrType(dreg: register(word: 0)),
        .cmp(sreg: register(word: 0), op: NFT_CMP_EQ, data: hostOrder(2 /* RTN_LOCAL */)),
    ]

    /// A 32-bit value as the kernel holds it in a register (host byte order).
    static func hostOrder(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
}
