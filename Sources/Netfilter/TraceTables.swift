#if canImport(Glibc)
import Glibc
#endif
import CNftnl
public import VirtPortCore

/// What `virtport trace` marks with `meta nftrace set 1`: connections to one host port (from one
/// prefix), and the guest's replies to them.
public struct TraceMatch: Sendable, Equatable {
    public var proto: IPProto
    public var hostPort: UInt16
    /// `--from`: only clients in this prefix.
    public var from: (address: IPAddress, length: Int)?
    /// The forward's guest and guest port, when known: its replies are traced too (through the
    /// guard in `table bridge`, and the host's inet hooks).
    public var guest: (address: IPAddress, port: UInt16)?

    public init(proto: IPProto, hostPort: UInt16, from: (address: IPAddress, length: Int)? = nil,
                guest: (address: IPAddress, port: UInt16)? = nil) {
        self.proto = proto
        self.hostPort = hostPort
        self.from = from
        self.guest = guest
    }

    public static func == (a: TraceMatch, b: TraceMatch) -> Bool {
        a.proto == b.proto && a.hostPort == b.hostPort && a.from?.address == b.from?.address
            && a.from?.length == b.from?.length && a.guest?.address == b.guest?.address && a.guest?.port == b.guest?.port
    }
}

/// A table or chain as a dump gives it back (any family, anyone's).
public struct KernelChain: Sendable, Equatable {
    /// "inet", "ip", "ip6", "bridge", "arp", "netdev".
    public var family: String
    public var table: String
    public var name: String
    /// Base chains: NF_INET_* hook number, priority, type ("filter", "nat"…), policy (0 drop, 1 accept).
    public var hook: UInt32?
    public var priority: Int32?
    public var type: String?
    public var policy: UInt32?
}

/// One rule of any table, read back: its handle, expression names and verdicts.
public struct KernelRule: Sendable {
    public var family: String
    public var table: String
    public var chain: String
    public var handle: UInt64
    /// The expressions' kernel names in order ("meta", "cmp", "payload", "reject", "target"…).
    public var expressions: [String]
    /// Immediate verdicts the rule sets (NF_DROP 0, NF_ACCEPT 1, NFT_JUMP -3…) with a jump's chain.
    public var verdicts: [(code: Int32, chain: String?)]
    /// The raw NEWRULE message (for `ForeignRule.mentions`).
    public var message: [UInt8]

    public init(family: String, table: String, chain: String, handle: UInt64, expressions: [String],
                verdicts: [(code: Int32, chain: String?)], message: [UInt8]) {
        self.family = family
        self.table = table
        self.chain = chain
        self.handle = handle
        self.expressions = expressions
        self.verdicts = verdicts
        self.message = message
    }

    /// Whether `text` (NUL-terminated) appears in the rule: a comment or an xt target's name.
    public func mentions(_ text: String) -> Bool { ForeignRule(handle: handle, message: message).mentions(text) }

    /// Carries virtport's tag (`virtport:BRIDGE`, the comment of its accept rule in libvirt's chains).
    public var isVirtportTagged: Bool { Bytes.find(Array("virtport:".utf8), in: message) != nil }

    /// The rule ends a packet's path with `reject` (nft) or `-j REJECT` (iptables-nft).
    public var rejects: Bool {
        expressions.contains("reject") || (expressions.contains("target") && ForeignRule(handle: handle, message: message).mentions("REJECT"))
    }

    /// The rule drops: `drop`, `reject`, or iptables' DROP/REJECT target.
    public var drops: Bool {
        rejects || verdicts.contains { $0.code == 0 } || (expressions.contains("target") && ForeignRule(handle: handle, message: message).mentions("DROP"))
    }
}

/// `virtport trace`'s tables: `table inet <table>_trace_<pid>` (prerouting and output chains at
/// priority -1000, before every other table's) and, when the guest is known, `table bridge
/// <table>_trace_<pid>` for the guest's replies before the guard sees them. Each holds nothing
/// but `meta nftrace set 1` rules; the trace deletes both when it ends, and a table of a trace
/// whose process is gone is found by `doctor` and deleted by `reconcile`.
extension NetfilterSession {
    /// The name prefix of trace tables: `<table>_trace_`.
    public var traceTablePrefix: String { "\(table)_trace_" }

    /// Creates the trace tables for `match` under `name` (one batch per family).
    /// - Throws: the kernel's refusal (EEXIST when a trace of this process runs already).
    public func installTrace(name: String, match: TraceMatch) throws(NetfilterError) {
        let original = Self.traceOriginal(match)
        let reply = match.guest.map { Self.traceReply(proto: match.proto, guest: $0.address, port: $0.port) }
        let failures = try execute { batch in
            TableSkeleton.appendTable(to: &batch, table: name, flags: Netlink.create | Netlink.excl,
                                      operation: .object("create table inet \(name)"))
            for (chain, hook) in [("prerouting", NF_INET_PRE_ROUTING), ("output", NF_INET_LOCAL_OUT)] {
                TableSkeleton.appendChain(to: &batch, table: name, chain: .init(name: chain, hook: hook, priority: -1000, rules: [], type: "filter"))
                Self.appendTraceRule(to: &batch, table: name, family: .inet, chain: chain, original)
                if let reply { Self.appendTraceRule(to: &batch, table: name, family: .inet, chain: chain, reply) }
            }
        }
        if !failures.isEmpty { throw BatchExchange.combine(failures) }
        guard let reply else { return }
        // Bridge: best effort (no bridge, no guard, nothing to see there).
        _ = try? execute { batch in
            TableSkeleton.appendTable(to: &batch, table: name, family: .bridge, flags: Netlink.create | Netlink.excl,
                                      operation: .object("create table bridge \(name)"))
            TableSkeleton.appendChain(to: &batch, table: name, family: .bridge,
                                      chain: .init(name: "prerouting", hook: NF_INET_PRE_ROUTING, priority: -1000, rules: [], type: "filter"))
            Self.appendTraceRule(to: &batch, table: name, family: .bridge, chain: "prerouting",
                                 Self.etherType(match.guest!.address.family) + reply)
        }
    }

    /// Deletes the trace tables `name` (inet and bridge); a missing one is not an error.
    public func removeTrace(name: String) throws(NetfilterError) {
        var last: NetfilterError?
        for family in [TableFamily.inet, .bridge] {
            let failures = try execute { TableSkeleton.appendDeleteTable(to: &$0, table: name, family: family) }
            if let f = failures.first(where: { !$0.error.isMissingObject }) { last = f.error }
        }
        if let last { throw last }
    }

    /// Trace tables in the kernel: (family, name, pid of the trace that made it).
    public func traceTables() throws(NetfilterError) -> [(family: String, name: String, pid: Int32)] {
        try listTables().compactMap { t in
            guard t.name.hasPrefix(traceTablePrefix), let pid = Int32(t.name.dropFirst(traceTablePrefix.count)) else { return nil }
            return (t.family, t.name, pid)
        }
    }

    /// Every table of every family: one NFT_MSG_GETTABLE dump.
    public func listTables() throws(NetfilterError) -> [(family: String, name: String)] {
        let sequence = takeSequence()
        let header = nftnl_nlmsg_build_hdr(scratch.chars, UInt16(NFT_MSG_GETTABLE.rawValue), UInt16(NFPROTO_UNSPEC), Netlink.dump, sequence)!
        try transport.send(Array(scratch.bytes(Int(header.pointee.nlmsg_len))))
        var out: [(String, String)] = []
        _ = try receiveDump(sequence: sequence, type: NFT_MSG_NEWTABLE, operation: "list tables") { (reply, message) throws(NetfilterError) in
            let bytes = Array(reply[message.offset..<(message.offset + message.length)])
            let t = nftnl_table_alloc()!
            defer { nftnl_table_free(t) }
            let ok = bytes.withUnsafeBytes { nftnl_table_nlmsg_parse(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: nlmsghdr.self), t) }
            guard ok >= 0, let name = nftnl_table_get_str(t, UInt16(NFTNL_TABLE_NAME.rawValue)) else { return }
            out.append((Self.anyFamilyName(nftnl_table_get_u32(t, UInt16(NFTNL_TABLE_FAMILY.rawValue))), String(cString: name)))
        }
        return out
    }

    /// Every chain of every table: one NFT_MSG_GETCHAIN dump.
    public func listChains() throws(NetfilterError) -> [KernelChain] {
        let sequence = takeSequence()
        let header = nftnl_nlmsg_build_hdr(scratch.chars, UInt16(NFT_MSG_GETCHAIN.rawValue), UInt16(NFPROTO_UNSPEC), Netlink.dump, sequence)!
        try transport.send(Array(scratch.bytes(Int(header.pointee.nlmsg_len))))
        var out: [KernelChain] = []
        _ = try receiveDump(sequence: sequence, type: NFT_MSG_NEWCHAIN, operation: "list chains") { (reply, message) throws(NetfilterError) in
            let bytes = Array(reply[message.offset..<(message.offset + message.length)])
            let c = nftnl_chain_alloc()!
            defer { nftnl_chain_free(c) }
            let ok = bytes.withUnsafeBytes { nftnl_chain_nlmsg_parse(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: nlmsghdr.self), c) }
            guard ok >= 0 else { return }
            func str(_ a: nftnl_chain_attr) -> String? { nftnl_chain_get_str(c, UInt16(a.rawValue)).map { String(cString: $0) } }
            func isSet(_ a: nftnl_chain_attr) -> Bool { nftnl_chain_is_set(c, UInt16(a.rawValue)) }
            out.append(KernelChain(
                family: Self.anyFamilyName(nftnl_chain_get_u32(c, UInt16(NFTNL_CHAIN_FAMILY.rawValue))),
                table: str(NFTNL_CHAIN_TABLE) ?? "", name: str(NFTNL_CHAIN_NAME) ?? "",
                hook: isSet(NFTNL_CHAIN_HOOKNUM) ? nftnl_chain_get_u32(c, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue)) : nil,
                priority: isSet(NFTNL_CHAIN_PRIO) ? nftnl_chain_get_s32(c, UInt16(NFTNL_CHAIN_PRIO.rawValue)) : nil,
                type: str(NFTNL_CHAIN_TYPE),
                policy: isSet(NFTNL_CHAIN_POLICY) ? nftnl_chain_get_u32(c, UInt16(NFTNL_CHAIN_POLICY.rawValue)) : nil))
        }
        return out
    }

    /// Every rule of every table (or of one family's table): one NFT_MSG_GETRULE dump.
    public func listAllRules() throws(NetfilterError) -> [KernelRule] {
        let sequence = takeSequence()
        let header = nftnl_nlmsg_build_hdr(scratch.chars, UInt16(NFT_MSG_GETRULE.rawValue), UInt16(NFPROTO_UNSPEC), Netlink.dump, sequence)!
        try transport.send(Array(scratch.bytes(Int(header.pointee.nlmsg_len))))
        var out: [KernelRule] = []
        _ = try receiveDump(sequence: sequence, type: NFT_MSG_NEWRULE, operation: "list rules") { (reply, message) throws(NetfilterError) in
            let bytes = Array(reply[message.offset..<(message.offset + message.length)])
            if let r = Self.parseRule(bytes) { out.append(r) }
        }
        return out
    }

    static func parseRule(_ bytes: [UInt8]) -> KernelRule? {
        let r = nftnl_rule_alloc()!
        defer { nftnl_rule_free(r) }
        let ok = bytes.withUnsafeBytes { nftnl_rule_nlmsg_parse(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: nlmsghdr.self), r) }
        guard ok >= 0 else { return nil }
        func str(_ a: nftnl_rule_attr) -> String { nftnl_rule_get_str(r, UInt16(a.rawValue)).map { String(cString: $0) } ?? "" }
        var names: [String] = []
        var verdicts: [(Int32, String?)] = []
        if let it = nftnl_expr_iter_create(r) {
            defer { nftnl_expr_iter_destroy(it) }
            while let e = nftnl_expr_iter_next(it) {
                let name = nftnl_expr_get_str(e, UInt16(NFTNL_EXPR_NAME)).map { String(cString: $0) } ?? "?"
                names.append(name)
                if name == "immediate", nftnl_expr_is_set(e, UInt16(NFTNL_EXPR_IMM_VERDICT)) {
                    let code = Int32(bitPattern: nftnl_expr_get_u32(e, UInt16(NFTNL_EXPR_IMM_VERDICT)))
                    let chain = nftnl_expr_get_str(e, UInt16(NFTNL_EXPR_IMM_CHAIN)).map { String(cString: $0) }
                    verdicts.append((code, chain))
                }
            }
        }
        return KernelRule(family: anyFamilyName(nftnl_rule_get_u32(r, UInt16(NFTNL_RULE_FAMILY.rawValue))),
                          table: str(NFTNL_RULE_TABLE), chain: str(NFTNL_RULE_CHAIN),
                          handle: nftnl_rule_get_u64(r, UInt16(NFTNL_RULE_HANDLE.rawValue)),
                          expressions: names, verdicts: verdicts, message: bytes)
    }

    /// nft's name of a family number.
    public static func anyFamilyName(_ f: UInt32) -> String {
        switch Int32(f) {
        case Int32(NFPROTO_INET): "inet"
        case Int32(NFPROTO_IPV4): "ip"
        case Int32(NFPROTO_IPV6): "ip6"
        case Int32(NFPROTO_BRIDGE): "bridge"
        case Int32(NFPROTO_ARP): "arp"
        case Int32(NFPROTO_NETDEV): "netdev"
        default: "family\(f)"
        }
    }

    // MARK: - The rules

    /// A trace rule: the match, then `meta nftrace set 1`.
    enum TraceExpr {
        case plain(RuleExpression)
        case setNftrace
    }

    static func traceOriginal(_ m: TraceMatch) -> [TraceExpr] {
        var out: [TraceExpr] = [.plain(.meta(NFT_META_L4PROTO, dreg: register(word: 0))),
                                .plain(.cmp(sreg: register(word: 0), op: NFT_CMP_EQ, data: [m.proto.number])),
                                .plain(.payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, length: 2, dreg: register(word: 0))),
                                .plain(.cmp(sreg: register(word: 0), op: NFT_CMP_EQ, data: [UInt8(m.hostPort >> 8), UInt8(m.hostPort & 0xff)]))]
        if let from = m.from {
            let bytes = from.address.bytes
            let v4 = from.address.family == .ipv4
            var mask = [UInt8](repeating: 0, count: bytes.count)
            for i in 0..<from.length { mask[i / 8] |= 0x80 >> UInt8(i % 8) }
            out += RuleExpression.nfproto(from.address.family).map { .plain($0) }
            out += [.plain(.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: v4 ? 12 : 8, length: UInt32(bytes.count), dreg: register(word: 0))),
                    .plain(.bitwise(reg: register(word: 0), mask: mask, xor: [UInt8](repeating: 0, count: bytes.count))),
                    .plain(.cmp(sreg: register(word: 0), op: NFT_CMP_EQ, data: zip(bytes, mask).map { $0 & $1 }))]
        }
        return out + [.setNftrace]
    }

    static func traceReply(proto: IPProto, guest: IPAddress, port: UInt16) -> [TraceExpr] {
        let v4 = guest.family == .ipv4
        return RuleExpression.nfproto(guest.family).map { .plain($0) } + [
            .plain(.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: v4 ? 12 : 8, length: UInt32(guest.bytes.count), dreg: register(word: 0))),
            .plain(.cmp(sreg: register(word: 0), op: NFT_CMP_EQ, data: guest.bytes)),
            .plain(.meta(NFT_META_L4PROTO, dreg: register(word: 0))),
            .plain(.cmp(sreg: register(word: 0), op: NFT_CMP_EQ, data: [proto.number])),
            .plain(.payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 0, length: 2, dreg: register(word: 0))),
            .plain(.cmp(sreg: register(word: 0), op: NFT_CMP_EQ, data: [UInt8(port >> 8), UInt8(port & 0xff)])),
            .setNftrace,
        ]
    }

    /// In a bridge table `meta nfproto` means nothing: `meta protocol` (the ethertype) instead.
    static func etherType(_ family: Family) -> [TraceExpr] {
        [.plain(.meta(NFT_META_PROTOCOL, dreg: register(word: 0))),
         .plain(.cmp(sreg: register(word: 0), op: NFT_CMP_EQ, data: family == .ipv4 ? [0x08, 0x00] : [0x86, 0xdd]))]
    }

    static func appendTraceRule(to batch: inout NetlinkBatch, table: String, family: TableFamily, chain: String, _ expressions: [TraceExpr]) {
        // A bridge table has no `meta nfproto`: its rule starts with the ethertype instead, so the
        // nfproto match (a meta and the cmp after it) is left out there.
        var list: [TraceExpr] = []
        var skipCmp = false
        for e in expressions {
            if skipCmp { skipCmp = false; continue }
            if family == .bridge, case .plain(.meta(let key, _)) = e, key == NFT_META_NFPROTO { skipCmp = true; continue }
            list.append(e)
        }
        let r = nftnl_rule_alloc()!
        defer { nftnl_rule_free(r) }
        nftnl_rule_set_str(r, UInt16(NFTNL_RULE_TABLE.rawValue), table)
        nftnl_rule_set_str(r, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
        nftnl_rule_set_u32(r, UInt16(NFTNL_RULE_FAMILY.rawValue), family.nfproto)
        for e in list {
            switch e {
            case .plain(let x):
                nftnl_rule_add_expr(r, x.build())
            case .setNftrace:
                let imm = nftnl_expr_alloc("immediate")!
                nftnl_expr_set_u32(imm, UInt16(NFTNL_EXPR_IMM_DREG), register(word: 0))
                var one: UInt8 = 1
                nftnl_expr_set(imm, UInt16(NFTNL_EXPR_IMM_DATA), &one, 1)
                nftnl_rule_add_expr(r, imm)
                let meta = nftnl_expr_alloc("meta")!
                nftnl_expr_set_u32(meta, UInt16(NFTNL_EXPR_META_KEY), NFT_META_NFTRACE.rawValue)
                nftnl_expr_set_u32(meta, UInt16(NFTNL_EXPR_META_SREG), register(word: 0))
                nftnl_rule_add_expr(r, meta)
            }
        }
        batch.append(NFT_MSG_NEWRULE, flags: Netlink.create | Netlink.append, family: UInt16(family.nfproto),
                     operation: .object("add trace rule to chain \(chain) of table \(family) \(table)")) {
            nftnl_rule_nlmsg_build_payload($0, r)
        }
    }
}
