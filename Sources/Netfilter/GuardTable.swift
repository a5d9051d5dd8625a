#if canImport(Glibc)
import Glibc
#endif
import CNftnl
public import VirtPortCore

/// One guarded bridge port as `table bridge virtport` holds it.
public struct GuardPort: Sendable, Hashable {
    /// The tap (the bridge port's name): every element of the port is keyed by it.
    public var tap: String
    public var mac: MACAddress
    /// Allowed IPv4/IPv6 sources (besides 0.0.0.0 for DHCP, :: for DAD and fe80::/10).
    public var addresses: [IPAddress]
    public var spoofing: Bool
    /// DHCP/DHCPv6 server replies allowed.
    public var dhcpServer: Bool
    /// Router advertisements and redirects allowed.
    public var routerAdvert: Bool

    public init(tap: String, mac: MACAddress, addresses: [IPAddress], spoofing: Bool, dhcpServer: Bool,
                routerAdvert: Bool) {
        self.tap = tap
        self.mac = mac
        self.addresses = addresses
        self.spoofing = spoofing
        self.dhcpServer = dhcpServer
        self.routerAdvert = routerAdvert
    }
}

/// Why the guard dropped a frame: one named counter per port and reason.
public enum GuardDropReason: String, Sendable, CaseIterable {
    /// Ethernet source is not the NIC's MAC.
    case mac
    /// IPv4 source is not one of the port's addresses (nor 0.0.0.0 in a DHCP request).
    case ip4
    /// IPv6 source is not one of its addresses or own link-locals, nor :: (DAD, MLD).
    case ip6
    /// ARP sender MAC or IP is not its own, or not Ethernet/IPv4 ARP.
    case arp
    /// RS/NS/NA with a link-layer address option that is not its MAC (any option), extension
    /// headers or too many options; an NA of an address not its own; a DAD claim of a link-local
    /// it may not claim.
    case nd
    /// A DHCP/DHCPv6 server message (by what it is, not its source port), or a DHCP client
    /// message whose chaddr is not its MAC.
    case dhcp
    /// ICMPv6 router advertisement (134) or redirect (137).
    case ra
    /// Any other ethertype (IPX, LLDP…) from a port with spoofing on; a VLAN tag with an id other
    /// than 0; two tags (QinQ).
    case other

    var map: String { "drop_\(rawValue)" }
    /// The counter object of `tap` for this reason.
    func counter(_ tap: String) -> String { "\(rawValue)_\(tap)" }
}

/// Everything in `table bridge <table>` except the elements. Per-frame cost is a fixed number of
/// hash lookups keyed by the input port, however many ports are guarded (nft syntax, abridged):
///
///     set guarded, spoof, dhcp_ok, ra_ok   { type ifname }
///     set mac { ifname . ether_addr }   set ip4 { ifname . ipv4_addr }
///     set ipv6 { ifname . ether_addr . ipv6_addr; flags dynamic }   its addresses, the EUI-64
///         link-local of its MAC, and up to 2 link-locals claimed by DAD (keyed by the MAC too:
///         what a tap's previous holder claimed is nothing to the next)
///     set ll_1, ll_2 { ifname . ether_addr; flags dynamic }   it has claimed 1 / 2 link-locals
///     set taken6 { ipv6_addr; flags dynamic }   every guarded port's EUI-64 and claimed link-locals
///     set fast4 { ifname . ether_addr . ether_type . ipv4_addr . inet_proto }   (tcp, icmp)
///     set fast6 { ifname . ether_addr . ether_type . ipv6_addr . inet_proto }   (tcp)
///     map drop_REASON { type ifname : counter }       counters REASON_TAP
///
///     chain prerouting { type filter hook prerouting priority -300     (and the same rules in
///       chain input { … hook input … }: frames to the host itself, including the reserved group
///       MACs 01:80:c2:00:00:0X the kernel delivers without prerouting)
///         iifname . ether saddr . ether type . ip saddr . meta l4proto @fast4 accept
///         iifname . ether saddr . ether type . ip6 saddr . meta l4proto @fast6 accept
///         iifname @spoof jump port           (every chain below it ends in a verdict)
///         iifname @guarded jump servers }    (spoofing off: the DHCP/RA guards only)
///     chain port { iifname . ether saddr != @mac … drop_mac drop
///                  ether type ip jump ip4;  arp jump arp4;  ip6 jump ipv6;  8021q/8021ad jump tagged
///                  … drop_other drop }
///     chain tagged { vlan id != 0 … drop_other drop       (a priority tag is looked through:
///                  meta protocol ip jump ip4; arp …; ip6 …      receivers look through it too)
///                  … drop_other drop }                 (and so is a second tag: dropped)
///     chain ip4 { meta l4proto udp jump udp4
///                 iifname . ip saddr @ip4 accept;  ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept
///                 … drop_ip4 drop }
///     chain udp4 { iifname != @dhcp_ok jump dhcp4_servers
///                  udp dport 67, first fragment … drop_dhcp drop
///                  udp dport 67, htype/hlen not Ethernet, or chaddr != its MAC … drop_dhcp drop }
///     chain dhcp4_servers { udp dport 68 … drop;  udp dport 67 op != BOOTREQUEST … drop;
///                           op BOOTREPLY with the DHCP magic cookie, any port … drop }
///     chain dhcp6_servers { udp dport 546 … drop;  udp dport 547 msg-type ADVERTISE, REPLY,
///                           RECONFIGURE or RELAY-REPL … drop }
///     chain arp4 { not Ethernet/IPv4 ARP … drop_arp drop;  iifname . arp saddr ether != @mac … drop
///                 arp saddr ip 0.0.0.0 accept;  iifname . arp saddr ip @ip4 accept;  … drop }
///     chain ipv6 { meta l4proto udp iifname != @dhcp_ok jump dhcp6_servers
///                 meta l4proto icmpv6 jump icmp6
///                 iifname . ether saddr . ip6 saddr @ipv6 accept;  ip6 saddr :: icmpv6 accept
///                 … drop_ip6 drop }
///     chain icmp6 { RS jump rs;  NS jump ns;  NA jump na;
///                   RA, redirect: iifname != @ra_ok … drop_ra drop }
///     chain rs/ns/na { extension headers, or more than 4 option slots … drop_nd drop
///                      every 8-byte option slot holding a link-layer address option:
///                        iifname . lladdr != @mac … drop_nd drop
///                      (na) iifname . ether saddr . target != @ipv6 … drop_nd drop
///                      (ns) ip6 saddr :: jump dad }
///     chain dad { iifname . ether saddr . target @ipv6 return;  target not link-local return
///                 target EUI-64 (of another MAC) or with a zero top half of its interface
///                 id (fe80::1 and the like: routers), or in @taken6 (another port's) … drop_nd drop
///                 iifname . ether saddr @ll_2 … drop_nd drop (bound reached)
///                 iifname . ether saddr @ll_1 add @ll_2 { … } add @ipv6 { … . target } add @taken6 { target } return
///                 add @ll_1 { iifname . ether saddr } add @ipv6 { … . target } add @taken6 { target } return }
///
/// Names are not nft keywords (`ip6`, `arp`, `vlan` are refused as names by nft's parser). A saved
/// `nft list` of this table still does not load back with nft 1.0.6, which refuses a raw payload
/// field (`@th,…`) in a concatenation with a typed set; virtport rebuilds it itself. The common frame, TCP or ICMP from the port's own MAC and address, costs one lookup
/// (measured: BENCHMARKS.md "Guard"); the rest are only walked by UDP, ARP, ICMPv6 and frames
/// that will be dropped.
enum GuardTable {
    static let family = TableFamily.bridge
    static let etherTypeID: UInt32 = 9  // TYPE_ETHERADDR
    static let objectCounter: UInt32 = 1  // NFT_OBJECT_COUNTER
    static let setObject: UInt32 = 0x40  // NFT_SET_OBJECT
    static let setEval: UInt32 = 0x20  // NFT_SET_EVAL ("dynamic")
    /// Link-local addresses a port may claim through DAD, besides its EUI-64 one.
    static let claimBound = 2
    /// Option slots of 8 bytes checked in an RS/NS/NA; a message with more is dropped.
    static let optionSlots = 4

    /// The port-keyed sets: name, key fields (nft type id, bytes), flags.
    static let sets: [(name: String, fields: [(type: UInt32, length: Int)], flags: UInt32)] = [
        ("guarded", [ifname], 0), ("spoof", [ifname], 0), ("dhcp_ok", [ifname], 0), ("ra_ok", [ifname], 0),
        ("mac", [ifname, (etherTypeID, 6)], 0), ("ip4", [ifname, (7, 4)], 0), ("ipv6", [ifname, (etherTypeID, 6), (8, 16)], setEval),
        ("ll_1", [ifname, (etherTypeID, 6)], setEval), ("ll_2", [ifname, (etherTypeID, 6)], setEval),
        ("taken6", [(8, 16)], setEval),
        ("fast4", [ifname, (etherTypeID, 6), (10, 2), (7, 4), (12, 1)], 0),
        ("fast6", [ifname, (etherTypeID, 6), (10, 2), (8, 16), (12, 1)], 0),
    ]
    /// Sets the data path adds to: elements the control plane did not put there.
    static let learned = ["ipv6", "ll_1", "ll_2"]
    static let ifname: (type: UInt32, length: Int) = (41, 16)
    /// Protocols of the fast path, by family (UDP and ICMPv6 take the checked path).
    static let fastProtocols: [Family: [UInt8]] = [.ipv4: [6, 1], .ipv6: [6]]

    static let k0 = register(word: 0)  // iifname
    static let k1 = register(word: 4)  // the field after it
    static let tmp = register(word: 8)

    static var baseRules: [[RuleExpression]] {
        [
            fastPath(.ipv4), fastPath(.ipv6),
            [.meta(NFT_META_IIFNAME, dreg: k0), .lookup(set: "spoof", sreg: k0, dreg: nil), .jump("port")],
            [.meta(NFT_META_IIFNAME, dreg: k0), .lookup(set: "guarded", sreg: k0, dreg: nil), .jump("servers")],
        ]
    }

    /// `iifname . ether saddr . ether type . ip(6) saddr . meta l4proto @fastN accept`.
    static func fastPath(_ family: Family) -> [RuleExpression] {
        let v4 = family == .ipv4
        return [.meta(NFT_META_IIFNAME, dreg: k0),
                .payload(base: NFT_PAYLOAD_LL_HEADER, offset: 6, length: 6, dreg: register(word: 4)),
                .payload(base: NFT_PAYLOAD_LL_HEADER, offset: 12, length: 2, dreg: register(word: 6)),
                .payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: v4 ? 12 : 8, length: v4 ? 4 : 16, dreg: register(word: 7)),
                .meta(NFT_META_L4PROTO, dreg: register(word: v4 ? 8 : 11)),
                .lookup(set: v4 ? "fast4" : "fast6", sreg: k0, dreg: nil), .accept]
    }

    static var chains: [TableSkeleton.Chain] {
        [
            TableSkeleton.Chain(name: "prerouting", hook: NF_INET_PRE_ROUTING, priority: -300, rules: baseRules, type: "filter"),
            TableSkeleton.Chain(name: "input", hook: NF_INET_LOCAL_IN, priority: -300, rules: baseRules, type: "filter"),
            TableSkeleton.Chain(name: "servers", hook: nil, priority: 0, rules: [
                proto(0x8100) + notIn("dhcp_ok") + drop(.other),
                proto(0x88a8) + notIn("dhcp_ok") + drop(.other),
                proto(0x8100) + notIn("ra_ok") + drop(.other),
                proto(0x88a8) + notIn("ra_ok") + drop(.other),
                proto(0x0800) + l4proto(17) + notIn("dhcp_ok") + [.jump("dhcp4_servers")],
                proto(0x86dd) + l4proto(17) + notIn("dhcp_ok") + [.jump("dhcp6_servers")],
                proto(0x86dd) + icmpv6(134) + notIn("ra_ok") + drop(.ra),
                proto(0x86dd) + icmpv6(137) + notIn("ra_ok") + drop(.ra),
            ]),
            TableSkeleton.Chain(name: "port", hook: nil, priority: 0, rules: [
                keyNotIn("mac", .payload(base: NFT_PAYLOAD_LL_HEADER, offset: 6, length: 6, dreg: k1)) + drop(.mac),
                etherType(0x0800) + [.jump("ip4")],
                etherType(0x86dd) + [.jump("ipv6")],
                etherType(0x0806) + [.jump("arp4")],
                etherType(0x8100) + [.jump("tagged")],
                etherType(0x88a8) + [.jump("tagged")],
                drop(.other),
            ]),
            TableSkeleton.Chain(name: "tagged", hook: nil, priority: 0, rules: [
                [.payload(base: NFT_PAYLOAD_LL_HEADER, offset: 14, length: 2, dreg: tmp),
                 .bitwise(reg: tmp, mask: [0x0f, 0xff], xor: [0, 0]),
                 .cmp(sreg: tmp, op: NFT_CMP_NEQ, data: [0, 0])] + drop(.other),
                proto(0x0800) + [.jump("ip4")],
                proto(0x86dd) + [.jump("ipv6")],
                proto(0x0806) + [.jump("arp4")],
                drop(.other),
            ]),
            TableSkeleton.Chain(name: "ip4", hook: nil, priority: 0, rules: [
                l4proto(17) + [.jump("udp4")],
                keyIn("ip4", nh(12, 4)) + [.accept],
                equal(NFT_PAYLOAD_NETWORK_HEADER, 12, [0, 0, 0, 0]) + l4proto(17)
                    + equal(NFT_PAYLOAD_TRANSPORT_HEADER, 0, [0, 68, 0, 67]) + [.accept],
                drop(.ip4),
            ]),
            // UDP over IPv4 from a port with spoofing on.
            TableSkeleton.Chain(name: "udp4", hook: nil, priority: 0, rules: [
                notIn("dhcp_ok") + [.jump("dhcp4_servers")],
                // A client message split so that chaddr is not in the first fragment.
                dport(67) + [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 6, length: 1, dreg: tmp),
                             .bitwise(reg: tmp, mask: [0x20], xor: [0]),
                             .cmp(sreg: tmp, op: NFT_CMP_NEQ, data: [0])] + drop(.dhcp),
                dport(67) + [.payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 9, length: 2, dreg: tmp),
                             .cmp(sreg: tmp, op: NFT_CMP_NEQ, data: [1, 6])] + drop(.dhcp),
                dport(67) + keyNotIn("mac", th(36, 6)) + drop(.dhcp),
            ]),
            // Server messages, whatever their source port: only servers and relays send to the
            // client port, a BOOTREPLY to the server port is a relay's, and op 2 with the magic
            // cookie is a DHCP reply anywhere.
            TableSkeleton.Chain(name: "dhcp4_servers", hook: nil, priority: 0, rules: [
                dport(68) + drop(.dhcp),
                dport(67) + [.payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 8, length: 1, dreg: tmp),
                             .cmp(sreg: tmp, op: NFT_CMP_NEQ, data: [1])] + drop(.dhcp),
                equal(NFT_PAYLOAD_TRANSPORT_HEADER, 8, [2]) + equal(NFT_PAYLOAD_TRANSPORT_HEADER, 244, [0x63, 0x82, 0x53, 0x63])
                    + drop(.dhcp),
            ]),
            TableSkeleton.Chain(name: "dhcp6_servers", hook: nil, priority: 0, rules: [dport(546) + drop(.dhcp)]
                + [2, 7, 10, 13].map { type in dport(547) + equal(NFT_PAYLOAD_TRANSPORT_HEADER, 8, [type]) + drop(.dhcp) }),
            TableSkeleton.Chain(name: "arp4", hook: nil, priority: 0, rules: [
                [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 0, length: 6, dreg: tmp),
                 .cmp(sreg: tmp, op: NFT_CMP_NEQ, data: [0, 1, 8, 0, 6, 4])] + drop(.arp),
                keyNotIn("mac", nh(8, 6)) + drop(.arp),
                equal(NFT_PAYLOAD_NETWORK_HEADER, 14, [0, 0, 0, 0]) + [.accept],
                keyIn("ip4", nh(14, 4)) + [.accept],
                drop(.arp),
            ]),
            TableSkeleton.Chain(name: "ipv6", hook: nil, priority: 0, rules: [
                l4proto(17) + notIn("dhcp_ok") + [.jump("dhcp6_servers")],
                l4proto(58) + [.jump("icmp6")],
                keyMacIn("ipv6", nh(8, 16, word: 6)) + [.accept],
                equal(NFT_PAYLOAD_NETWORK_HEADER, 8, [UInt8](repeating: 0, count: 16)) + l4proto(58) + [.accept],
                drop(.ip6),
            ]),
            // ICMPv6 only (returns to ip6 for the source check).
            TableSkeleton.Chain(name: "icmp6", hook: nil, priority: 0, rules: [
                icmpType(133) + [.jump("rs")],
                icmpType(134) + notIn("ra_ok") + drop(.ra),
                icmpType(135) + [.jump("ns")],
                icmpType(136) + [.jump("na")],
                icmpType(137) + notIn("ra_ok") + drop(.ra),
            ]),
            TableSkeleton.Chain(name: "rs", hook: nil, priority: 0, rules: ndShape(options: 8)),
            TableSkeleton.Chain(name: "ns", hook: nil, priority: 0, rules: ndShape(options: 24) + [
                equal(NFT_PAYLOAD_NETWORK_HEADER, 8, [UInt8](repeating: 0, count: 16)) + [.jump("dad")],
            ]),
            TableSkeleton.Chain(name: "na", hook: nil, priority: 0, rules: ndShape(options: 24) + [
                keyMacNotIn("ipv6", th(8, 16, word: 6)) + drop(.nd),
            ]),
            // A DAD probe (NS from ::) for an address the port does not hold yet.
            TableSkeleton.Chain(name: "dad", hook: nil, priority: 0, rules: [
                keyMacIn("ipv6", th(8, 16, word: 6)) + [.return],
                // A global address: its DAD probe passes (from ::, it teaches no neighbour
                // anything); the port may use the address only once it is one of its own.
                notLinkLocal(NFT_PAYLOAD_TRANSPORT_HEADER, 8) + [.return],
                equal(NFT_PAYLOAD_TRANSPORT_HEADER, 8 + 11, [0xff, 0xfe]) + drop(.nd),
                equal(NFT_PAYLOAD_TRANSPORT_HEADER, 8 + 8, [0, 0, 0, 0, 0, 0]) + drop(.nd),
                // Another guarded port's link-local (its EUI-64 one, or one it claimed).
                [th(8, 16, word: 6), .lookup(set: "taken6", sreg: register(word: 6), dreg: nil)] + drop(.nd),
                portMAC + [.lookup(set: "ll_\(claimBound)", sreg: k0, dreg: nil)] + drop(.nd),
            ] + (1..<claimBound).reversed().map { n in
                portMAC + [.lookup(set: "ll_\(n)", sreg: k0, dreg: nil), .dynsetAdd(set: "ll_\(n + 1)", sreg: k0),
                           th(8, 16, word: 6), .dynsetAdd(set: "ipv6", sreg: k0),
                           .dynsetAdd(set: "taken6", sreg: register(word: 6)), .return]
            } + [
                portMAC + [.dynsetAdd(set: "ll_1", sreg: k0), th(8, 16, word: 6), .dynsetAdd(set: "ipv6", sreg: k0),
                           .dynsetAdd(set: "taken6", sreg: register(word: 6)), .return],
            ]),
        ]
    }

    /// `iifname . ether saddr` into the key registers.
    static let portMAC: [RuleExpression] = [
        .meta(NFT_META_IIFNAME, dreg: k0), .payload(base: NFT_PAYLOAD_LL_HEADER, offset: 6, length: 6, dreg: k1),
    ]

    /// `iifname . ether saddr . FIELD @set` / `!= @set` (FIELD loaded at word 6).
    static func keyMacIn(_ set: String, _ field: RuleExpression) -> [RuleExpression] {
        portMAC + [field, .lookup(set: set, sreg: k0, dreg: nil)]
    }

    static func keyMacNotIn(_ set: String, _ field: RuleExpression) -> [RuleExpression] {
        portMAC + [field, .lookupNot(set: set, sreg: k0)]
    }

    /// An RS, NS or NA whose options start at `options` (ICMPv6 offset): no extension headers, at
    /// most `optionSlots` 8-byte option slots, and every slot that holds a link-layer address
    /// option (type 1 or 2, length 1: an Ethernet address) names the port's MAC. An option
    /// starts on a slot boundary, so checking every slot checks every option; a longer option
    /// whose inside looks like one is checked too (no stack sends such NDP).
    static func ndShape(options: UInt32) -> [[RuleExpression]] {
        let maxLength = options + UInt32(8 * optionSlots)
        return [
            [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 6, length: 1, dreg: tmp),
             .cmp(sreg: tmp, op: NFT_CMP_NEQ, data: [58])] + drop(.nd),
            [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 4, length: 2, dreg: tmp),
             .cmp(sreg: tmp, op: NFT_CMP_GT, data: [UInt8(maxLength >> 8), UInt8(maxLength & 0xff)])] + drop(.nd),
        ] + (0..<UInt32(optionSlots)).map { slot in
            let at = options + 8 * slot
            return [.payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: at, length: 2, dreg: tmp),
                    .bitwise(reg: tmp, mask: [0xfc, 0xff], xor: [0, 0]),
                    .cmp(sreg: tmp, op: NFT_CMP_EQ, data: [0, 1])] + keyNotIn("mac", th(at + 2, 6)) + drop(.nd)
        }
    }

    static func nh(_ offset: UInt32, _ length: UInt32, word: Int = 4) -> RuleExpression {
        .payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: offset, length: length, dreg: register(word: word))
    }

    static func th(_ offset: UInt32, _ length: UInt32, word: Int = 4) -> RuleExpression {
        .payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: offset, length: length, dreg: register(word: word))
    }

    static func equal(_ base: nft_payload_bases, _ offset: UInt32, _ data: [UInt8]) -> [RuleExpression] {
        [.payload(base: base, offset: offset, length: UInt32(data.count), dreg: tmp),
         .cmp(sreg: tmp, op: NFT_CMP_EQ, data: data)]
    }

    /// The 16 bytes at `offset` are not in fe80::/10.
    static func notLinkLocal(_ base: nft_payload_bases, _ offset: UInt32) -> [RuleExpression] {
        [.payload(base: base, offset: offset, length: 2, dreg: tmp),
         .bitwise(reg: tmp, mask: [0xff, 0xc0], xor: [0, 0]),
         .cmp(sreg: tmp, op: NFT_CMP_NEQ, data: [0xfe, 0x80])]
    }

    /// `ether type` as the frame carries it (a VLAN tag's TPID when it has one).
    static func etherType(_ type: UInt16) -> [RuleExpression] {
        equal(NFT_PAYLOAD_LL_HEADER, 12, [UInt8(type >> 8), UInt8(type & 0xff)])
    }

    /// `meta protocol`: the ethertype inside the (stripped) outer VLAN tag, else the frame's.
    static func proto(_ type: UInt16) -> [RuleExpression] {
        [.meta(NFT_META_PROTOCOL, dreg: tmp), .cmp(sreg: tmp, op: NFT_CMP_EQ, data: [UInt8(type >> 8), UInt8(type & 0xff)])]
    }

    static func l4proto(_ proto: UInt8) -> [RuleExpression] {
        [.meta(NFT_META_L4PROTO, dreg: tmp), .cmp(sreg: tmp, op: NFT_CMP_EQ, data: [proto])]
    }

    /// `udp dport PORT` (callers have checked `meta l4proto udp`).
    static func dport(_ port: UInt16) -> [RuleExpression] {
        equal(NFT_PAYLOAD_TRANSPORT_HEADER, 2, [UInt8(port >> 8), UInt8(port & 0xff)])
    }

    static func icmpv6(_ type: UInt8) -> [RuleExpression] {
        l4proto(58) + icmpType(type)
    }

    /// The ICMPv6 type (callers have checked `meta l4proto icmpv6`).
    static func icmpType(_ type: UInt8) -> [RuleExpression] {
        equal(NFT_PAYLOAD_TRANSPORT_HEADER, 0, [type])
    }

    /// `iifname != @set`.
    static func notIn(_ set: String) -> [RuleExpression] {
        [.meta(NFT_META_IIFNAME, dreg: k0), .lookupNot(set: set, sreg: k0)]
    }

    /// `iifname . FIELD @set` / `!= @set`, FIELD loaded by `field` into the register after iifname.
    static func keyIn(_ set: String, _ field: RuleExpression) -> [RuleExpression] {
        [.meta(NFT_META_IIFNAME, dreg: k0), field, .lookup(set: set, sreg: k0, dreg: nil)]
    }

    static func keyNotIn(_ set: String, _ field: RuleExpression) -> [RuleExpression] {
        [.meta(NFT_META_IIFNAME, dreg: k0), field, .lookupNot(set: set, sreg: k0)]
    }

    /// `counter name iifname map @drop_REASON drop`.
    static func drop(_ reason: GuardDropReason) -> [RuleExpression] {
        [.meta(NFT_META_IIFNAME, dreg: k0), .objrefMap(map: reason.map, sreg: k0), .drop]
    }

    /// The table, its sets and maps, chains and rules (NEWTABLE without NLM_F_EXCL: the caller
    /// deletes the table first when it rebuilds).
    static func append(to batch: inout NetlinkBatch, table: String) {
        TableSkeleton.appendTable(to: &batch, table: table, family: family, flags: Netlink.create,
                                  operation: .object("add table bridge \(table)"))
        var id: UInt32 = 1
        for set in sets {
            TableSkeleton.appendSet(to: &batch, table: table, family: family, name: set.name, id: id,
                                    keyType: set.fields.reduce(0) { ($0 << 6) | $1.type },
                                    keyLength: set.fields.reduce(0) { $0 + (($1.length + 3) & ~3) }, data: nil,
                                    flags: set.flags, hostOrderKey: set.fields.count == 1 && set.fields[0].type == ifname.type,
                                    size: set.flags & setEval != 0 ? 65535 : nil)
            id += 1
        }
        for reason in GuardDropReason.allCases {
            TableSkeleton.appendSet(to: &batch, table: table, family: family, name: reason.map, id: id,
                                    keyType: ifname.type, keyLength: ifname.length, data: nil,
                                    flags: setObject, objectType: objectCounter, hostOrderKey: true)
            id += 1
        }
        // Jump targets before the chain that jumps to them.
        let all = chains
        for chain in all.reversed() { TableSkeleton.appendChain(to: &batch, table: table, family: family, chain: chain) }
        for chain in all.reversed() {
            for rule in chain.rules {
                TableSkeleton.appendRule(to: &batch, table: table, family: family, chain: chain.name, rule)
            }
        }
    }

    /// Key bytes: the tap zero-padded to IFNAMSIZ, then each field zero-padded to whole words.
    static func key(_ tap: String, _ fields: [UInt8]...) -> [UInt8] {
        var out = Array(tap.utf8)
        out += repeatElement(0, count: 16 - out.count)
        for field in fields {
            out += field
            out += repeatElement(0, count: ((field.count + 3) & ~3) - field.count)
        }
        return out
    }

    /// The `taken6` keys of learned `ipv6` elements (tap . MAC . address): their link-locals.
    static func taken(_ learned: [(set: String, key: [UInt8])]) -> [(set: String, key: [UInt8])] {
        learned.filter { $0.set == "ipv6" && $0.key.count == 40 && $0.key[24] == 0xfe && $0.key[25] & 0xc0 == 0x80 }
            .map { ("taken6", Array($0.key[24..<40])) }
    }

    /// The tap a key starts with.
    static func tap(of key: [UInt8]) -> String {
        String(decoding: key.prefix(16).prefix { $0 != 0 }, as: UTF8.self)
    }

    /// fe80::/64 with the modified EUI-64 interface id of `mac`.
    static func linkLocal(_ mac: MACAddress) -> [UInt8] {
        let m = mac.bytes
        return [0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]
    }

    /// Every set element of `port`: (set, key).
    static func elements(_ port: GuardPort) -> [(set: String, key: [UInt8])] {
        var out: [(set: String, key: [UInt8])] = [("guarded", key(port.tap))]
        if port.spoofing {
            out.append(("spoof", key(port.tap)))
            out.append(("mac", key(port.tap, port.mac.bytes)))
            out.append(("taken6", linkLocal(port.mac)))
            var six: [[UInt8]] = [linkLocal(port.mac)]
            for a in port.addresses {
                if a.family == .ipv4 {
                    out.append(("ip4", key(port.tap, a.bytes)))
                    for p in fastProtocols[.ipv4]! { out.append(("fast4", key(port.tap, port.mac.bytes, [0x08, 0x00], a.bytes, [p]))) }
                } else if !six.contains(a.bytes) {
                    six.append(a.bytes)
                }
            }
            for a in six {
                out.append(("ipv6", key(port.tap, port.mac.bytes, a)))
                for p in fastProtocols[.ipv6]! { out.append(("fast6", key(port.tap, port.mac.bytes, [0x86, 0xdd], a, [p]))) }
            }
        }
        if port.dhcpServer { out.append(("dhcp_ok", key(port.tap))) }
        if port.routerAdvert { out.append(("ra_ok", key(port.tap))) }
        return out
    }

    /// Checks that `port` can be encoded (its tap is a usable interface name).
    static func validate(_ port: GuardPort) throws(NetfilterError) {
        let n = port.tap.utf8.count
        guard n >= 1, n <= maxInterfaceNameLength, !port.tap.utf8.contains(0) else {
            throw NetfilterError(errno: EINVAL, operation: "guard port \"\(port.tap)\"",
                                 detail: "interface name is not 1-\(maxInterfaceNameLength) bytes")
        }
    }

    /// Adds (`adding`) or deletes the elements of `ports`, grouped by set; with `counters`, the
    /// port's counter objects and their map entries too (created before, deleted after, the
    /// entries that point at them).
    static func appendPorts(to batch: inout NetlinkBatch, table: String, adding: Bool, _ ports: [GuardPort], counters: Bool) {
        guard !ports.isEmpty else { return }
        let verb = adding ? "add" : "delete"
        let what = ports.count == 1 ? "port \(ports[0].tap)" : "\(ports.count) ports"
        if counters && adding {
            for port in ports { for reason in GuardDropReason.allCases { appendCounter(to: &batch, table: table, port.tap, reason, adding: true) } }
        }
        var bySet: [String: [[UInt8]]] = [:]
        for port in ports { for e in elements(port) { bySet[e.set, default: []].append(e.key) } }
        for set in sets {
            guard let keys = bySet[set.name] else { continue }
            appendKeys(to: &batch, table: table, set: set.name, adding: adding, keys, objrefs: nil,
                       operation: "\(verb) elements of \(what) in set \(set.name) of table bridge \(table)")
        }
        if counters {
            for reason in GuardDropReason.allCases {
                appendKeys(to: &batch, table: table, set: reason.map, adding: adding, ports.map { key($0.tap) },
                           objrefs: ports.map { reason.counter($0.tap) },
                           operation: "\(verb) elements of \(what) in map \(reason.map) of table bridge \(table)")
            }
            if !adding {
                for port in ports { for reason in GuardDropReason.allCases { appendCounter(to: &batch, table: table, port.tap, reason, adding: false) } }
            }
        }
    }

    /// Keys of one set, split to stay under `NetlinkBatch.messageBudget`.
    static func appendKeys(to batch: inout NetlinkBatch, table: String, set: String, adding: Bool, _ keys: [[UInt8]],
                           objrefs: [String]?, operation: String) {
        let perMessage = max(1, NetlinkBatch.messageBudget / 96)
        var start = 0
        while start < keys.count {
            let end = min(start + perMessage, keys.count)
            let chunk = keys[start..<end].map { (key: $0, data: [UInt8]?.none, flags: UInt32(0)) }
            ElementMessages.append(to: &batch, table: table, family: family, set: set, adding: adding, chunk,
                                   objrefs: objrefs.map { Array($0[start..<end]) }, operation: .object(operation))
            start = end
        }
    }

    static func appendCounter(to batch: inout NetlinkBatch, table: String, _ tap: String, _ reason: GuardDropReason,
                              adding: Bool) {
        let o = nftnl_obj_alloc()!
        defer { nftnl_obj_free(o) }
        nftnl_obj_set_str(o, UInt16(NFTNL_OBJ_TABLE), table)
        nftnl_obj_set_str(o, UInt16(NFTNL_OBJ_NAME), reason.counter(tap))
        nftnl_obj_set_u32(o, UInt16(NFTNL_OBJ_FAMILY), family.nfproto)
        nftnl_obj_set_u32(o, UInt16(NFTNL_OBJ_TYPE), objectCounter)
        let verb = adding ? "add" : "delete"
        batch.append(adding ? NFT_MSG_NEWOBJ : NFT_MSG_DELOBJ, flags: adding ? Netlink.create : 0,
                     family: UInt16(family.nfproto),
                     operation: .object("\(verb) counter \(reason.counter(tap)) of table bridge \(table)")) {
            nftnl_obj_nlmsg_build_payload($0, o)
        }
    }
}
