#if canImport(Glibc)
import Glibc
#endif
import CNftnl
import VirtPortCore

/// The one rule virtport puts into a chain it does not own: libvirt rejects new inbound connections
/// to a NAT network, and this rule, in front of that reject, accepts the connections a DNAT
/// translated to `subnet` on `bridge` (README "libvirt's firewall").
///
/// Written over netlink in the encoding the chain's owner uses itself, so that its tools keep
/// reading (and `iptables -C` matching) the rule:
/// - `.iptables` (iptables-nft 1.8, libvirt < 10.4): exactly what
///   `iptables -I FORWARD 1 -d SUBNET -o BRIDGE -m conntrack --ctstate DNAT -m comment --comment TAG -j ACCEPT`
///   writes: native oifname and address compares, the `conntrack` (rev 3) and `comment` matches
///   through nft_compat, a counter, accept.
/// - `.nftables` (libvirt >= 10.4): what `nft insert rule … oifname BRIDGE ip daddr SUBNET
///   ct status dnat counter accept comment "TAG"` writes.
public struct AcceptRule: Sendable, Equatable {
    public enum Style: Sendable { case iptables, nftables }

    public var style: Style
    public var bridge: String
    public var subnet: Subnet
    /// Stored as the rule's comment: how virtport finds its rule again.
    public var tag: String

    public init(style: Style, bridge: String, subnet: Subnet, tag: String) {
        self.style = style
        self.bridge = bridge
        self.subnet = subnet
        self.tag = tag
    }

    /// XT_CONNTRACK_STATE in match_flags, XT_CONNTRACK_STATE_DNAT in state_mask (linux/netfilter/xt_conntrack.h).
    static let conntrackStateFlag: UInt16 = 0x0001
    static let conntrackStateDNAT: UInt16 = 0x0080
    /// sizeof(struct xt_conntrack_mtinfo3) = 164, XT_ALIGNed to 168; match_flags at 146, state_mask at 150.
    static let conntrackInfoSize = 168
    /// struct xt_comment_info: char comment[XT_MAX_COMMENT_LEN = 256].
    static let commentInfoSize = 256
    /// IPS_DST_NAT (linux/netfilter/nf_conntrack_common.h).
    static let statusDNAT: UInt32 = 1 << 5

    /// `--ctstate DNAT` as libxt_conntrack fills struct xt_conntrack_mtinfo3 (host byte order).
    static var conntrackDNATInfo: [UInt8] {
        var info = [UInt8](repeating: 0, count: conntrackInfoSize)
        withUnsafeBytes(of: conntrackStateFlag) { info.replaceSubrange(146..<148, with: $0) }
        withUnsafeBytes(of: conntrackStateDNAT) { info.replaceSubrange(150..<152, with: $0) }
        return info
    }

    var expressions: [RuleExpression] {
        let reg = register(word: 0)
        let name = Array(bridge.utf8)
        // iptables compares the name and its NUL; nft the whole IFNAMSIZ buffer. (A name longer than
        // IFNAMSIZ - 1 is not a bridge's: the kernel refuses the rule, naming it.)
        let ifname = style == .iptables ? name + [0] : name + [UInt8](repeating: 0, count: max(1, 16 - name.count))
        var out: [RuleExpression] = [.meta(NFT_META_OIFNAME, dreg: reg), .cmp(sreg: reg, op: NFT_CMP_EQ, data: ifname)]
        out += destination(reg)
        switch style {
        case .iptables:
            var comment = [UInt8](repeating: 0, count: Self.commentInfoSize)
            comment.replaceSubrange(0..<min(tag.utf8.count, Self.commentInfoSize - 1),
                                    with: tag.utf8.prefix(Self.commentInfoSize - 1))
            out += [.match(name: "conntrack", revision: 3, info: Self.conntrackDNATInfo),
                    .match(name: "comment", revision: 0, info: comment)]
        case .nftables:
            out += [.ct(NFT_CT_STATUS, dreg: reg),
                    .bitwise(reg: reg, mask: RuleExpression.hostOrder(Self.statusDNAT), xor: [0, 0, 0, 0]),
                    .cmp(sreg: reg, op: NFT_CMP_NEQ, data: [0, 0, 0, 0])]
        }
        return out + [.counter, .accept]
    }

    /// `ip daddr SUBNET` / `ip6 daddr SUBNET` as both tools write it: whole bytes of the prefix
    /// compared directly, a mask only when the prefix ends inside a byte.
    func destination(_ reg: UInt32) -> [RuleExpression] {
        let offset: UInt32 = subnet.family == .ipv4 ? 16 : 24
        let bytes = subnet.address.bytes
        let prefix = Int(subnet.prefix)
        if prefix % 8 == 0 {
            let n = prefix / 8
            return [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: offset, length: UInt32(n), dreg: reg),
                    .cmp(sreg: reg, op: NFT_CMP_EQ, data: Array(bytes[0..<n]))]
        }
        let mask = Subnet.masked([UInt8](repeating: 0xff, count: bytes.count), subnet.prefix)
        return [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: offset, length: UInt32(bytes.count), dreg: reg),
                .bitwise(reg: reg, mask: mask, xor: [UInt8](repeating: 0, count: bytes.count)),
                .cmp(sreg: reg, op: NFT_CMP_EQ, data: bytes)]
    }
}

extension NetfilterSession {
    /// Inserts `rule` at the top of `chain` in table `table` of family ip / ip6 (the subnet's):
    /// one batch with one NEWRULE (no NLM_F_APPEND, no position: the kernel puts it first),
    /// preceded in the same batch by a DELRULE for each of `replacing` (the old copies: the chain
    /// is never without the rule). A handle that is gone fails the whole batch (ENOENT).
    public func insertAtTop(_ rule: AcceptRule, table: String, chain: String,
                            replacing: [UInt64] = []) throws(NetfilterError) {
        let nfproto = Self.nfproto(rule.subnet.family)
        let failures = try execute { batch in
            for handle in replacing {
                let old = nftnl_rule_alloc()!
                defer { nftnl_rule_free(old) }
                nftnl_rule_set_str(old, UInt16(NFTNL_RULE_TABLE.rawValue), table)
                nftnl_rule_set_str(old, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
                nftnl_rule_set_u64(old, UInt16(NFTNL_RULE_HANDLE.rawValue), handle)
                let what = "delete rule \(Self.familyName(nfproto)) \(table) \(chain) handle \(handle)"
                batch.append(NFT_MSG_DELRULE, flags: 0, family: nfproto, operation: .object(what)) {
                    nftnl_rule_nlmsg_build_payload($0, old)
                }
            }
            let r = nftnl_rule_alloc()!
            defer { nftnl_rule_free(r) }
            nftnl_rule_set_str(r, UInt16(NFTNL_RULE_TABLE.rawValue), table)
            nftnl_rule_set_str(r, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
            nftnl_rule_set_u32(r, UInt16(NFTNL_RULE_FAMILY.rawValue), UInt32(nfproto))
            for expression in rule.expressions { nftnl_rule_add_expr(r, expression.build()) }
            if rule.style == .nftables {
                let udata = nftnl_udata_buf_alloc(UInt32(NFT_USERDATA_MAXLEN))!
                defer { nftnl_udata_buf_free(udata) }
                _ = nftnl_udata_put_strz(udata, UInt8(NFTNL_UDATA_RULE_COMMENT.rawValue), rule.tag)
                nftnl_rule_set_data(r, UInt16(NFTNL_RULE_USERDATA.rawValue), nftnl_udata_buf_data(udata),
                                    nftnl_udata_buf_len(udata))
            }
            let what = "insert rule \(Self.familyName(nfproto)) \(table) \(chain) (\(rule.tag))"
            batch.append(NFT_MSG_NEWRULE, flags: Netlink.create, family: nfproto, operation: .object(what)) {
                nftnl_rule_nlmsg_build_payload($0, r)
            }
        }
        if !failures.isEmpty { throw BatchExchange.combine(failures) }
    }
}
