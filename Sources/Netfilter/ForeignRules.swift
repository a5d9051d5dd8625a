#if canImport(Glibc)
import Glibc
#endif
import CNftnl
public import VirtPortCore

/// One rule of a chain virtport does not own (libvirt's), as read back: its handle and raw message.
public struct ForeignRule: Sendable {
    public var handle: UInt64
    /// The NEWRULE message as the kernel sent it (expressions, match info, userdata).
    public var message: [UInt8]

    /// Whether `text` followed by a NUL appears in the rule: how a tag stored as an nft comment
    /// (rule userdata) or an iptables `-m comment` (xt match info) is found without decoding either.
    public func mentions(_ text: String) -> Bool {
        Bytes.find(Array(text.utf8) + [0], in: message) != nil
    }
}

extension NetfilterSession {
    /// Appends one NFT_MSG_DELRULE by handle (family `nfproto`) to `batch`.
    static func appendDeleteRule(_ batch: inout NetlinkBatch, nfproto: UInt16, table: String, chain: String, handle: UInt64) {
        let r = nftnl_rule_alloc()!
        defer { nftnl_rule_free(r) }
        nftnl_rule_set_str(r, UInt16(NFTNL_RULE_TABLE.rawValue), table)
        nftnl_rule_set_str(r, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
        nftnl_rule_set_u64(r, UInt16(NFTNL_RULE_HANDLE.rawValue), handle)
        let what = "delete rule \(familyName(nfproto)) \(table) \(chain) handle \(handle)"
        batch.append(NFT_MSG_DELRULE, flags: 0, family: nfproto, operation: .object(what)) {
            nftnl_rule_nlmsg_build_payload($0, r)
        }
    }

    /// Reads the rules of `chain` in table `table` of family ip (`.ipv4`) or ip6 (`.ipv6`):
    /// one NFT_MSG_GETRULE dump, read-only. Returns nil when the table or chain does not exist.
    public func listRules(family: Family, table: String, chain: String) throws(NetfilterError) -> [ForeignRule]? {
        try dumpRules(nfproto: Self.nfproto(family), table: table, chain: chain)
    }

    /// Deletes the rules with these handles from `chain` of table `table` in family ip (`.ipv4`) or
    /// ip6 (`.ipv6`): one batch of NFT_MSG_DELRULE by handle, no process. A rule that is already
    /// gone is not an error. For virtport's own tagged rule in libvirt's chains only.
    public func deleteRules(family: Family, table: String, chain: String, handles: [UInt64]) throws(NetfilterError) {
        if handles.isEmpty { return }
        let nfproto = Self.nfproto(family)
        let failures = try execute { batch in
            for handle in handles { Self.appendDeleteRule(&batch, nfproto: nfproto, table: table, chain: chain, handle: handle) }
        }
        let real = failures.filter { !$0.error.isMissingObject }
        if !real.isEmpty { throw BatchExchange.combine(real) }
        // One of them was already gone, which aborted the whole batch: delete the others one by one.
        if !failures.isEmpty, handles.count > 1 {
            for handle in handles { try deleteRules(family: family, table: table, chain: chain, handles: [handle]) }
        }
    }

    /// Whether `chain` exists in table `table` of family ip (`.ipv4`) or ip6 (`.ipv6`): one
    /// NFT_MSG_GETCHAIN round trip, no dump.
    public func chainExists(family: Family, table: String, chain: String) throws(NetfilterError) -> Bool {
        try chainExists(nfproto: Self.nfproto(family), table: table, chain: chain)
    }

    /// Whether virtport's own chains exist with all their rules: a table whose rules were flushed
    /// (`nft flush table`, a firewall reload) or whose chain was deleted while its maps survived
    /// still accepts elements, so only this check finds it. One rule dump of the whole table.
    ///
    /// Compares each rule's chain and expression kinds with this version's skeleton, so a table
    /// an older virtport built (its `_addr` rules without `fib daddr type local`) counts as damaged
    /// and the caller rebuilds it in the current shape.
    public func skeletonIsIntact() throws(NetfilterError) -> Bool {
        let rules = try dumpRules(nfproto: UInt16(NFPROTO_INET), table: table, chain: nil) ?? []
        let expected = TableSkeleton.chains.flatMap { chain in
            chain.rules.map { chain.name + ":" + $0.map(\.kernelName).sorted().joined(separator: ",") }
        }
        guard rules.count == expected.count else { return false }
        return rules.map(Self.shape).sorted() == expected.sorted()
    }

    /// "CHAIN:expr,expr,…" of a dumped rule, the expression names sorted: a table saved with
    /// `nft list ruleset` and loaded back with `nft -f` holds the same expressions, but nft puts
    /// its `meta nfproto` dependency where it likes.
    static func shape(_ rule: ForeignRule) -> String {
        let parsed = nftnl_rule_alloc()!
        defer { nftnl_rule_free(parsed) }
        let ok = rule.message.withUnsafeBytes { raw in
            nftnl_rule_nlmsg_parse(UnsafeMutableRawPointer(mutating: raw.baseAddress!)
                .assumingMemoryBound(to: nlmsghdr.self), parsed)
        }
        guard ok >= 0 else { return "?" }
        let chain = nftnl_rule_get_str(parsed, UInt16(NFTNL_RULE_CHAIN.rawValue)).map { String(cString: $0) } ?? "?"
        var names: [String] = []
        guard let iterator = nftnl_expr_iter_create(parsed) else { return chain + ":" }
        defer { nftnl_expr_iter_destroy(iterator) }
        while let e = nftnl_expr_iter_next(iterator) {
            names.append(nftnl_expr_get_str(e, UInt16(NFTNL_EXPR_NAME)).map { String(cString: $0) } ?? "?")
        }
        return chain + ":" + names.sorted().joined(separator: ",")
    }

    /// NFT_MSG_GETRULE dump of one chain (or, with `chain` nil, of every chain of the table) of any
    /// family; nil when the chain is missing. A missing table gives an empty list.
    func dumpRules(nfproto: UInt16, table: String, chain: String?) throws(NetfilterError) -> [ForeignRule]? {
        // A rule dump filtered on a missing table or chain answers with an empty list, not ENOENT.
        if let chain, try !chainExists(nfproto: nfproto, table: table, chain: chain) { return nil }
        let sequence = takeSequence()
        let r = nftnl_rule_alloc()!
        defer { nftnl_rule_free(r) }
        nftnl_rule_set_str(r, UInt16(NFTNL_RULE_TABLE.rawValue), table)
        if let chain { nftnl_rule_set_str(r, UInt16(NFTNL_RULE_CHAIN.rawValue), chain) }
        let header = nftnl_nlmsg_build_hdr(scratch.chars, UInt16(NFT_MSG_GETRULE.rawValue), nfproto, Netlink.dump, sequence)!
        nftnl_rule_nlmsg_build_payload(header, r)
        try transport.send(Array(scratch.bytes(Int(header.pointee.nlmsg_len))))
        let operation = "list rules of \(Self.familyName(nfproto)) \(table) \(chain ?? "*")"
        var rules: [ForeignRule] = []
        let end = try receiveDump(sequence: sequence, type: NFT_MSG_NEWRULE, operation: operation) {
            (reply, message) throws(NetfilterError) in
            let bytes = Array(reply[message.offset..<(message.offset + message.length)])
            let parsed = nftnl_rule_alloc()!
            defer { nftnl_rule_free(parsed) }
            let ok = bytes.withUnsafeBytes { raw in
                nftnl_rule_nlmsg_parse(UnsafeMutableRawPointer(mutating: raw.baseAddress!)
                    .assumingMemoryBound(to: nlmsghdr.self), parsed)
            }
            guard ok >= 0 else { return }
            rules.append(ForeignRule(handle: nftnl_rule_get_u64(parsed, UInt16(NFTNL_RULE_HANDLE.rawValue)),
                                     message: bytes))
        }
        guard case .complete = end else { return nil }
        return rules
    }
}

extension NetfilterSession {
    static func nfproto(_ family: Family) -> UInt16 { UInt16(family == .ipv4 ? NFPROTO_IPV4 : NFPROTO_IPV6) }

    static func familyName(_ nfproto: UInt16) -> String {
        switch Int32(nfproto) {
        case Int32(NFPROTO_IPV4): "ip"
        case Int32(NFPROTO_IPV6): "ip6"
        default: "inet"
        }
    }

    /// NFT_MSG_GETCHAIN (not a dump) for one chain: true when it exists, false on ENOENT.
    func chainExists(nfproto: UInt16, table: String, chain: String) throws(NetfilterError) -> Bool {
        let sequence = takeSequence()
        let c = nftnl_chain_alloc()!
        defer { nftnl_chain_free(c) }
        nftnl_chain_set_str(c, UInt16(NFTNL_CHAIN_TABLE.rawValue), table)
        nftnl_chain_set_str(c, UInt16(NFTNL_CHAIN_NAME.rawValue), chain)
        let header = nftnl_nlmsg_build_hdr(scratch.chars, UInt16(NFT_MSG_GETCHAIN.rawValue), nfproto, Netlink.ack, sequence)!
        nftnl_chain_nlmsg_build_payload(header, c)
        try transport.send(Array(scratch.bytes(Int(header.pointee.nlmsg_len))))
        let operation = "read chain \(Self.familyName(nfproto)) \(table) \(chain)"
        while true {
            guard let reply = try transport.receive(timeout: BatchExchange.replyTimeout) else {
                throw NetfilterError(errno: ETIMEDOUT, operation: operation)
            }
            for message in NetlinkMessage.split(reply) where message.sequence == sequence {
                guard let ack = NetlinkAck(message, in: reply) else { continue }  // the NEWCHAIN answer
                switch ack.errno {
                case 0: return true
                case ENOENT: return false
                default: throw NetfilterError(errno: ack.errno, operation: operation, detail: ack.message)
                }
            }
        }
    }
}
