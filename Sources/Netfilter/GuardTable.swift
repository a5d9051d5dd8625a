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
    /// IPv6 source is not one of its addresses, link-local or :: (DAD).
    case ip6
    /// ARP sender MAC or IP is not its own, or not Ethernet/IPv4 ARP.
    case arp
    /// NDP solicitation/advertisement with another's link-layer address, or an advertisement of
    /// another's address.
    case nd
    /// DHCP or DHCPv6 server reply (udp sport 67 / 547).
    case dhcp
    /// ICMPv6 router advertisement (134) or redirect (137).
    case ra
    /// Any other ethertype (VLAN-tagged, IPX, LLDP…) from a port with spoofing on.
    case other

    var map: String { "drop_\(rawValue)" }
    /// The counter object of `tap` for this reason.
    func counter(_ tap: String) -> String { "\(rawValue)_\(tap)" }
}

/// Everything in `table bridge <table>` except the elements. Per-frame cost is a fixed number of
/// hash lookups keyed by the input port, however many ports are guarded:
///
///     set guarded, spoof, dhcp_ok, ra_ok   { type ifname }
///     set mac { type ifname . ether_addr }  set ip4 { ifname . ipv4_addr }  set ip6 { ifname . ipv6_addr }
///     map drop_REASON { type ifname : counter }       counters REASON_TAP
///     chain prerouting { type filter hook prerouting priority -300
///         iifname @spoof jump port           (every chain below it ends in a verdict)
///         iifname @guarded jump servers }    (spoofing off: the DHCP/RA guards only)
///     chain servers { ether type ip udp sport 67 iifname != @dhcp_ok … drop_dhcp drop
///                     ether type ip6 udp sport 547 …;  icmpv6 type { 134, 137 } iifname != @ra_ok … drop_ra drop }
///     chain port { iifname . ether saddr != @mac … drop_mac drop
///                  ether type ip jump ip4;  ether type arp jump arp;  ether type ip6 jump ip6
///                  … drop_other drop }
///     chain ip4 { udp sport 67 iifname != @dhcp_ok … drop_dhcp drop
///                 iifname . ip saddr @ip4 accept;  ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept
///                 … drop_ip4 drop }
///     chain arp { not Ethernet/IPv4 ARP … drop_arp drop;  iifname . arp saddr ether != @mac … drop
///                 arp saddr ip 0.0.0.0 accept;  iifname . arp saddr ip @ip4 accept;  … drop }
///     chain ip6 { udp sport 547 iifname != @dhcp_ok … drop_dhcp drop
///                 meta l4proto icmpv6 jump icmp6
///                 iifname . ip6 saddr @ip6 accept;  ip6 saddr :: icmpv6 accept;  ip6 saddr fe80::/10 accept
///                 … drop_ip6 drop }
///     chain icmp6 { icmpv6 type { 134, 137 } iifname != @ra_ok … drop_ra drop
///                   NS whose source link-layer option is not its MAC … drop_nd drop
///                   NA whose target link-layer option is not its MAC … drop_nd drop
///                   NA of a target outside fe80::/10 not in @ip6 … drop_nd drop }
///
/// The order is the common frame's: an IPv4 or IPv6 packet from its own address of a guarded
/// port runs ~15 expressions (4 lookups) and is accepted; the server guards are tested only on
/// frames of their family (measured: BENCHMARKS.md "Guard").
/// The link-layer option checked is the first one (where every stack puts it).
enum GuardTable {
    static let family = TableFamily.bridge
    static let etherTypeID: UInt32 = 9  // TYPE_ETHERADDR
    static let objectCounter: UInt32 = 1  // NFT_OBJECT_COUNTER
    static let setObject: UInt32 = 0x40  // NFT_SET_OBJECT

    /// The port-keyed sets: name, key fields (nft type id, bytes).
    static let sets: [(name: String, fields: [(type: UInt32, length: Int)])] = [
        ("guarded", [ifname]), ("spoof", [ifname]), ("dhcp_ok", [ifname]), ("ra_ok", [ifname]),
        ("mac", [ifname, (etherTypeID, 6)]), ("ip4", [ifname, (7, 4)]), ("ip6", [ifname, (8, 16)]),
    ]
    static let ifname: (type: UInt32, length: Int) = (41, 16)

    static let k0 = register(word: 0)  // iifname
    static let k1 = register(word: 4)  // the field after it
    static let tmp = register(word: 8)

    static var chains: [TableSkeleton.Chain] {
        [
            TableSkeleton.Chain(name: "prerouting", hook: NF_INET_PRE_ROUTING, priority: -300, rules: [
                [.meta(NFT_META_IIFNAME, dreg: k0), .lookup(set: "spoof", sreg: k0, dreg: nil), .jump("port")],
                [.meta(NFT_META_IIFNAME, dreg: k0), .lookup(set: "guarded", sreg: k0, dreg: nil), .jump("servers")],
            ], type: "filter"),
            TableSkeleton.Chain(name: "servers", hook: nil, priority: 0, rules: [
                etherType(0x0800) + dhcpServer4,
            ] + [etherType(0x86dd)].flatMap { ip6 in serverGuards6.map { ip6 + $0 } }),
            TableSkeleton.Chain(name: "port", hook: nil, priority: 0, rules: [
                keyNotIn("mac", .payload(base: NFT_PAYLOAD_LL_HEADER, offset: 6, length: 6, dreg: k1)) + drop(.mac),
                etherType(0x0800) + [.jump("ip4")],
                etherType(0x0806) + [.jump("arp")],
                etherType(0x86dd) + [.jump("ip6")],
                drop(.other),
            ]),
            TableSkeleton.Chain(name: "ip4", hook: nil, priority: 0, rules: [
                dhcpServer4,
                keyIn("ip4", nh(12, 4)) + [.accept],
                equal(NFT_PAYLOAD_NETWORK_HEADER, 12, [0, 0, 0, 0]) + l4proto(17)
                    + equal(NFT_PAYLOAD_TRANSPORT_HEADER, 0, [0, 68, 0, 67]) + [.accept],
                drop(.ip4),
            ]),
            TableSkeleton.Chain(name: "arp", hook: nil, priority: 0, rules: [
                [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 0, length: 6, dreg: tmp),
                 .cmp(sreg: tmp, op: NFT_CMP_NEQ, data: [0, 1, 8, 0, 6, 4])] + drop(.arp),
                keyNotIn("mac", nh(8, 6)) + drop(.arp),
                equal(NFT_PAYLOAD_NETWORK_HEADER, 14, [0, 0, 0, 0]) + [.accept],
                keyIn("ip4", nh(14, 4)) + [.accept],
                drop(.arp),
            ]),
            TableSkeleton.Chain(name: "ip6", hook: nil, priority: 0, rules: [
                serverGuards6[0],
                l4proto(58) + [.jump("icmp6")],
                keyIn("ip6", nh(8, 16)) + [.accept],
                equal(NFT_PAYLOAD_NETWORK_HEADER, 8, [UInt8](repeating: 0, count: 16)) + l4proto(58) + [.accept],
                [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 8, length: 2, dreg: tmp),
                 .bitwise(reg: tmp, mask: [0xff, 0xc0], xor: [0, 0]),
                 .cmp(sreg: tmp, op: NFT_CMP_EQ, data: [0xfe, 0x80]), .accept],
                drop(.ip6),
            ]),
            // ICMPv6 only (returns to ip6 for the source check).
            TableSkeleton.Chain(name: "icmp6", hook: nil, priority: 0, rules: Array(serverGuards6.dropFirst()) + [
                icmpv6(135) + equal(NFT_PAYLOAD_TRANSPORT_HEADER, 24, [1])
                    + keyNotIn("mac", th(26, 6)) + drop(.nd),
                icmpv6(136) + equal(NFT_PAYLOAD_TRANSPORT_HEADER, 24, [2])
                    + keyNotIn("mac", th(26, 6)) + drop(.nd),
                icmpv6(136) + notLinkLocal(NFT_PAYLOAD_TRANSPORT_HEADER, 8)
                    + keyNotIn("ip6", th(8, 16)) + drop(.nd),
            ]),
        ]
    }

    /// A DHCP server reply (udp sport 67) from a port not in @dhcp_ok, in an IPv4 packet.
    static var dhcpServer4: [RuleExpression] { udp(sourcePort: 67) + notIn("dhcp_ok") + drop(.dhcp) }

    /// DHCPv6 server replies, router advertisements and redirects from ports not allowed them, in
    /// an IPv6 packet.
    static var serverGuards6: [[RuleExpression]] {
        [udp(sourcePort: 547) + notIn("dhcp_ok") + drop(.dhcp),
         icmpv6(134) + notIn("ra_ok") + drop(.ra),
         icmpv6(137) + notIn("ra_ok") + drop(.ra)]
    }

    static func nh(_ offset: UInt32, _ length: UInt32) -> RuleExpression {
        .payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: offset, length: length, dreg: k1)
    }

    static func th(_ offset: UInt32, _ length: UInt32) -> RuleExpression {
        .payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: offset, length: length, dreg: k1)
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

    static func etherType(_ type: UInt16) -> [RuleExpression] {
        equal(NFT_PAYLOAD_LL_HEADER, 12, [UInt8(type >> 8), UInt8(type & 0xff)])
    }

    static func l4proto(_ proto: UInt8) -> [RuleExpression] {
        [.meta(NFT_META_L4PROTO, dreg: tmp), .cmp(sreg: tmp, op: NFT_CMP_EQ, data: [proto])]
    }

    static func udp(sourcePort port: UInt16) -> [RuleExpression] {
        l4proto(17) + equal(NFT_PAYLOAD_TRANSPORT_HEADER, 0, [UInt8(port >> 8), UInt8(port & 0xff)])
    }

    static func icmpv6(_ type: UInt8) -> [RuleExpression] {
        l4proto(58) + equal(NFT_PAYLOAD_TRANSPORT_HEADER, 0, [type])
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
    static func append(to batch: inout Batch, table: String) {
        TableSkeleton.appendTable(to: &batch, table: table, family: family, flags: Netlink.create,
                                  operation: .object("add table bridge \(table)"))
        var id: UInt32 = 1
        for set in sets {
            TableSkeleton.appendSet(to: &batch, table: table, family: family, name: set.name, id: id,
                                    keyType: set.fields.reduce(0) { ($0 << 6) | $1.type },
                                    keyLength: set.fields.reduce(0) { $0 + (($1.length + 3) & ~3) }, data: nil, flags: 0,
                                    hostOrderKey: set.fields.count == 1)
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

    /// Key bytes: the tap zero-padded to IFNAMSIZ, then the field zero-padded to whole words.
    static func key(_ tap: String, _ field: [UInt8] = []) -> [UInt8] {
        var out = Array(tap.utf8)
        out += repeatElement(0, count: 16 - out.count)
        out += field
        out += repeatElement(0, count: ((field.count + 3) & ~3) - field.count)
        return out
    }

    /// Every set element of `port`: (set, key).
    static func elements(_ port: GuardPort) -> [(set: String, key: [UInt8])] {
        var out: [(set: String, key: [UInt8])] = [("guarded", key(port.tap))]
        if port.spoofing {
            out.append(("spoof", key(port.tap)))
            out.append(("mac", key(port.tap, port.mac.bytes)))
            for a in port.addresses { out.append((a.family == .ipv4 ? "ip4" : "ip6", key(port.tap, a.bytes))) }
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
    static func appendPorts(to batch: inout Batch, table: String, adding: Bool, _ ports: [GuardPort], counters: Bool) {
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

    /// Keys of one set, split to stay under `Batch.messageBudget`.
    static func appendKeys(to batch: inout Batch, table: String, set: String, adding: Bool, _ keys: [[UInt8]],
                           objrefs: [String]?, operation: String) {
        let perMessage = max(1, Batch.messageBudget / 96)
        var start = 0
        while start < keys.count {
            let end = min(start + perMessage, keys.count)
            let chunk = keys[start..<end].map { (key: $0, data: [UInt8]?.none, flags: UInt32(0)) }
            ElementMessages.append(to: &batch, table: table, family: family, set: set, adding: adding, chunk,
                                   objrefs: objrefs.map { Array($0[start..<end]) }, operation: .object(operation))
            start = end
        }
    }

    static func appendCounter(to batch: inout Batch, table: String, _ tap: String, _ reason: GuardDropReason,
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
