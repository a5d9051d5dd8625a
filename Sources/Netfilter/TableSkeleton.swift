import CNftnl
import VirtPortCore

/// Everything in `table inet virtport` except the elements: eight DNAT maps, two hairpin sets,
/// three nat chains and their rules. Per-packet cost is a fixed number of map lookups, however
/// many forwards there are.
///
///     chain prerouting  { type nat hook prerouting priority -100
///         fib daddr type local dnat ip to iifname . ip daddr . meta l4proto . th dport map @fwd4_dev_addr
///         fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @fwd4_addr
///         fib daddr type local dnat ip to iifname . meta l4proto . th dport map @fwd4_dev
///         fib daddr type local dnat ip to meta l4proto . th dport map @fwd4
///         … the same for ip6 }
///     chain output      { type nat hook output priority -100: the _addr and plain rules only }
///     chain postrouting { type nat hook postrouting priority 100
///         ct status dnat ip saddr @hairpin4 masquerade
///         ct status dnat ip6 saddr @hairpin6 masquerade }
///
/// Every rule starts with `meta nfproto ipv4|ipv6`, as nft itself adds in an inet table. Every
/// DNAT rule requires `fib daddr type local`, the `_addr` ones too: `address=` is checked to be
/// one of the host's addresses when a VM starts, and an address that stops being local later
/// (removed, moved to another host) must stop matching rather than take connections that pass
/// through the host or leave it for that address.
enum TableSkeleton {
    struct Chain {
        var name: String
        /// nil: a regular chain (a jump target).
        var hook: nf_inet_hooks?
        var priority: Int32
        var rules: [[RuleExpression]]
        var type = "nat"
    }

    static var chains: [Chain] {
        let families: [Family] = [.ipv4, .ipv6]
        // Each DNAT rule comes after the rule that records the connections it takes (`FlowSet`).
        let prerouting = families.flatMap { family in
            // Most specific first: dev+addr, addr, dev, neither.
            [(true, true), (false, true), (true, false), (false, false)].flatMap { dev, addr in
                let map = ForwardMap(family: family, hasAddress: addr, hasDev: dev)
                return [recordRule(map), dnatRule(map)]
            }
        }
        let output = families.flatMap { family in
            [true, false].flatMap { addr in
                let map = ForwardMap(family: family, hasAddress: addr, hasDev: false)
                return [recordRule(map, skipLoopback: !addr), dnatRule(map, skipLoopback: !addr)]
            }
        }
        return [
            Chain(name: "prerouting", hook: NF_INET_PRE_ROUTING, priority: -100, rules: prerouting),
            Chain(name: "output", hook: NF_INET_LOCAL_OUT, priority: -100, rules: output),
            Chain(name: "postrouting", hook: NF_INET_POST_ROUTING, priority: 100,
                  rules: HairpinSet.all.map(hairpinRule)),
        ]
    }

    /// `fib daddr type local KEY @MAP add @flowsN { ip saddr . th sport . meta l4proto . ip daddr
    /// . th dport }`: the DNAT rule's match (the map's key present), then the connection recorded.
    static func recordRule(_ map: ForwardMap, skipLoopback: Bool = false) -> [RuleExpression] {
        var rule = dnatRule(map, skipLoopback: skipLoopback)
        rule.removeLast(2)  // the lookup with a data register, and the dnat
        rule.append(.lookup(set: map.name, sreg: register(word: 0), dreg: nil))
        return rule + FlowSet(family: map.family).record
    }

    /// `fib daddr type local dnat ip to KEY map @MAP`: loads the key fields into consecutive
    /// registers, looks them up, and DNATs to the address . port the map returns.
    /// With `skipLoopback` (the output chain's any-address rules), `ip daddr != 127.0.0.0/8` /
    /// `ip6 daddr != ::1` first: a local client of a host service on 127.0.0.1:PORT must keep
    /// reaching that service (DNAT from loopback to a guest would need route_localnet anyway).
    static func dnatRule(_ map: ForwardMap, skipLoopback: Bool = false) -> [RuleExpression] {
        var rule = RuleExpression.nfproto(map.family)
        if skipLoopback { rule += RuleExpression.notLoopback(map.family) }
        rule += RuleExpression.fibLocal
        var word = 0
        for field in map.keyFields {
            let dreg = register(word: word)
            switch field {
            case .ifname:
                rule.append(.meta(NFT_META_IIFNAME, dreg: dreg))
            case .address(let family):  // ip daddr / ip6 daddr
                rule.append(.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: family == .ipv4 ? 16 : 24,
                                     length: UInt32(field.length), dreg: dreg))
            case .proto:
                rule.append(.meta(NFT_META_L4PROTO, dreg: dreg))
            case .port:  // th dport
                rule.append(.payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, length: 2, dreg: dreg))
            }
            word += field.paddedLength / 4
        }
        rule.append(.lookup(set: map.name, sreg: register(word: 0), dreg: register(word: 0)))
        rule.append(.dnat(family: map.family, addressReg: register(word: 0),
                          portReg: register(word: KeyField.address(map.family).paddedLength / 4)))
        return rule
    }

    /// `ct status dnat ip saddr @hairpin4 masquerade`.
    static func hairpinRule(_ set: HairpinSet) -> [RuleExpression] {
        let reg = register(word: 0)
        return [.ct(NFT_CT_STATUS, dreg: reg),
                .bitwise(reg: reg, mask: RuleExpression.hostOrder(1 << 5 /* IPS_DST_NAT */), xor: [0, 0, 0, 0]),
                .cmp(sreg: reg, op: NFT_CMP_NEQ, data: [0, 0, 0, 0])]
            + RuleExpression.nfproto(set.family)
            + [.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: set.family == .ipv4 ? 12 : 8,
                        length: UInt32(set.keyLength), dreg: reg),
               .lookup(set: set.name, sreg: reg, dreg: nil),
               .masquerade]
    }

    /// Appends the whole skeleton: NEWTABLE with NLM_F_EXCL (fails with EEXIST when the table is
    /// already there, so two concurrent first callers never both add rules), sets, chains, rules.
    static func append(to batch: inout NetlinkBatch, table: String) {
        appendTable(to: &batch, table: table, flags: Netlink.create | Netlink.excl, operation: .createTable(table))
        var setID: UInt32 = 1
        for map in ForwardMap.all {
            appendSet(to: &batch, table: table, name: map.name, id: setID, keyType: map.keyType,
                      keyLength: map.keyLength, data: (map.dataType, map.dataLength), flags: UInt32(NFT_SET_MAP.rawValue))
            setID += 1
        }
        for set in HairpinSet.all {
            appendSet(to: &batch, table: table, name: set.name, id: setID, keyType: set.keyType,
                      keyLength: set.keyLength, data: nil, flags: UInt32(NFT_SET_INTERVAL.rawValue))
            setID += 1
        }
        for set in FlowSet.all {
            appendSet(to: &batch, table: table, name: set.name, id: setID, keyType: set.keyType,
                      keyLength: set.keyLength, data: nil,
                      flags: UInt32(NFT_SET_TIMEOUT.rawValue | NFT_SET_EVAL.rawValue),
                      timeoutMs: FlowSet.timeoutMs, size: FlowSet.capacity)
            setID += 1
        }
        for chain in chains {
            appendChain(to: &batch, table: table, chain: chain)
            for rule in chain.rules { appendRule(to: &batch, table: table, chain: chain.name, rule) }
        }
    }

    static func appendTable(to batch: inout NetlinkBatch, table: String, family: TableFamily = .inet, flags: UInt16,
                            operation: BatchOperation) {
        let t = nftnl_table_alloc()!
        defer { nftnl_table_free(t) }
        nftnl_table_set_str(t, UInt16(NFTNL_TABLE_NAME.rawValue), table)
        nftnl_table_set_u32(t, UInt16(NFTNL_TABLE_FAMILY.rawValue), family.nfproto)
        batch.append(NFT_MSG_NEWTABLE, flags: flags, family: UInt16(family.nfproto), operation: operation) {
            nftnl_table_nlmsg_build_payload($0, t)
        }
    }

    /// NEWTABLE (no NLM_F_EXCL) then DELTABLE: deletes the table whether or not it exists, in
    /// any kernel (NFT_MSG_DESTROYTABLE needs 6.3).
    static func appendDeleteTable(to batch: inout NetlinkBatch, table: String, family: TableFamily = .inet) {
        appendTable(to: &batch, table: table, family: family, flags: Netlink.create,
                    operation: .object("add table \(family) \(table)"))
        let t = nftnl_table_alloc()!
        defer { nftnl_table_free(t) }
        nftnl_table_set_str(t, UInt16(NFTNL_TABLE_NAME.rawValue), table)
        nftnl_table_set_u32(t, UInt16(NFTNL_TABLE_FAMILY.rawValue), family.nfproto)
        batch.append(NFT_MSG_DELTABLE, flags: 0, family: UInt16(family.nfproto),
                     operation: .object("delete table \(family) \(table)")) {
            nftnl_table_nlmsg_build_payload($0, t)
        }
    }

    /// - Parameter objectType: for an object map (NFT_SET_OBJECT in `flags`), NFT_OBJECT_*.
    static func appendSet(to batch: inout NetlinkBatch, table: String, family: TableFamily = .inet, name: String, id: UInt32,
                          keyType: UInt32, keyLength: Int, data: (type: UInt32, length: Int)?, flags: UInt32,
                          objectType: UInt32? = nil, hostOrderKey: Bool = false, timeoutMs: UInt64? = nil,
                          size: UInt32? = nil) {
        let s = nftnl_set_alloc()!
        defer { nftnl_set_free(s) }
        nftnl_set_set_str(s, UInt16(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(s, UInt16(NFTNL_SET_NAME.rawValue), name)
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_FAMILY.rawValue), family.nfproto)
        if let objectType { nftnl_set_set_u32(s, UInt16(NFTNL_SET_OBJ_TYPE.rawValue), objectType) }
        if hostOrderKey {
            // What nft writes for a single `ifname` key: without it `nft list` shows the names as "".
            let ud = nftnl_udata_buf_alloc(16)!
            defer { nftnl_udata_buf_free(ud) }
            _ = nftnl_udata_put_u32(ud, UInt8(NFTNL_UDATA_SET_KEYBYTEORDER.rawValue), 1 /* BYTEORDER_HOST_ENDIAN */)
            nftnl_set_set_data(s, UInt16(NFTNL_SET_USERDATA.rawValue), nftnl_udata_buf_data(ud), nftnl_udata_buf_len(ud))
        }
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_KEY_TYPE.rawValue), keyType)
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_KEY_LEN.rawValue), UInt32(keyLength))
        if let data {
            nftnl_set_set_u32(s, UInt16(NFTNL_SET_DATA_TYPE.rawValue), data.type)
            nftnl_set_set_u32(s, UInt16(NFTNL_SET_DATA_LEN.rawValue), UInt32(data.length))
        }
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_FLAGS.rawValue), flags)
        if let size { nftnl_set_set_u32(s, UInt16(NFTNL_SET_DESC_SIZE.rawValue), size) }
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_ID.rawValue), id)
        if let timeoutMs { nftnl_set_set_u64(s, UInt16(NFTNL_SET_TIMEOUT.rawValue), timeoutMs) }
        let kind = data == nil && objectType == nil ? "set" : "map"
        batch.append(NFT_MSG_NEWSET, flags: Netlink.create, family: UInt16(family.nfproto),
                     operation: .object("add \(kind) \(name) to table \(family) \(table)")) {
            nftnl_set_nlmsg_build_payload($0, s)
        }
    }

    static func appendChain(to batch: inout NetlinkBatch, table: String, family: TableFamily = .inet, chain: Chain) {
        let c = nftnl_chain_alloc()!
        defer { nftnl_chain_free(c) }
        nftnl_chain_set_str(c, UInt16(NFTNL_CHAIN_TABLE.rawValue), table)
        nftnl_chain_set_str(c, UInt16(NFTNL_CHAIN_NAME.rawValue), chain.name)
        nftnl_chain_set_u32(c, UInt16(NFTNL_CHAIN_FAMILY.rawValue), family.nfproto)
        if let hook = chain.hook {
            nftnl_chain_set_str(c, UInt16(NFTNL_CHAIN_TYPE.rawValue), chain.type)
            nftnl_chain_set_u32(c, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue), hook.rawValue)
            nftnl_chain_set_s32(c, UInt16(NFTNL_CHAIN_PRIO.rawValue), chain.priority)
        }
        batch.append(NFT_MSG_NEWCHAIN, flags: Netlink.create, family: UInt16(family.nfproto),
                     operation: .object("add chain \(chain.name) to table \(family) \(table)")) {
            nftnl_chain_nlmsg_build_payload($0, c)
        }
    }

    static func appendRule(to batch: inout NetlinkBatch, table: String, family: TableFamily = .inet, chain: String,
                           _ expressions: [RuleExpression]) {
        let r = nftnl_rule_alloc()!
        defer { nftnl_rule_free(r) }
        nftnl_rule_set_str(r, UInt16(NFTNL_RULE_TABLE.rawValue), table)
        nftnl_rule_set_str(r, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
        nftnl_rule_set_u32(r, UInt16(NFTNL_RULE_FAMILY.rawValue), family.nfproto)
        var target = "rule"
        for expression in expressions {
            nftnl_rule_add_expr(r, expression.build())
            if case .lookup(let set, _, _) = expression { target = "rule using @\(set)" }
            if case .lookupNot(let set, _) = expression { target = "rule using @\(set)" }
        }
        batch.append(NFT_MSG_NEWRULE, flags: Netlink.create | Netlink.append, family: UInt16(family.nfproto),
                     operation: .object("add \(target) to chain \(chain) of table \(family) \(table)")) {
            nftnl_rule_nlmsg_build_payload($0, r)
        }
    }
}

/// The two families virtport owns a table in: `inet` (forwards) and `bridge` (port guards).
enum TableFamily: String {
    case inet, bridge
    var nfproto: UInt32 { self == .inet ? UInt32(NFPROTO_INET) : UInt32(NFPROTO_BRIDGE) }
}
