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
        let expected = Self.skeletonShapes
        guard rules.count == expected.count else { return false }
        var shapes = rules.map { Self.shape($0.message) }
        shapes.sort(by: Self.bytesBefore)
        return shapes == expected
    }

    /// The shapes of this version's skeleton rules (`shape`), sorted: built once per process (the
    /// agent checks the skeleton after every change that adds elements).
    static let skeletonShapes: [[UInt8]] = shapes(of: TableSkeleton.chains)

    /// The sorted shapes of `chains`' rules, to compare with a dump's.
    static func shapes(of chains: [TableSkeleton.Chain]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        for chain in chains {
            for rule in chain.rules {
                var names: [[UInt8]] = []
                for expression in rule { names.append(Array(expression.kernelName.utf8)) }
                out.append(shapeBytes(chain: Array(chain.name.utf8), names: &names))
            }
        }
        out.sort(by: bytesBefore)
        return out
    }

    /// "CHAIN:expr,expr,…" (as bytes) of a dumped NEWRULE message, the expression names sorted: a
    /// table saved with `nft list ruleset` and loaded back with `nft -f` holds the same expressions,
    /// but nft puts its `meta nfproto` dependency where it likes. Read straight from the message's
    /// attributes (NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS → NFTA_LIST_ELEM → NFTA_EXPR_NAME), no
    /// libnftnl parse and no String per expression: the agent runs this for ~30 rules per change.
    static func shape(_ message: [UInt8]) -> [UInt8] {
        message.withUnsafeBytes { raw -> [UInt8] in
            var chain: [UInt8] = [UInt8(ascii: "?")]
            var names: [[UInt8]] = []
            let length = raw.count >= 20 ? min(raw.count, Int(raw.loadUnaligned(as: UInt32.self))) : 0
            guard length >= 20 else { return shapeBytes(chain: chain, names: &names) }
            RuleAttributes.each(raw, 20..<length) { type, value in
                if type == UInt16(NFTA_RULE_CHAIN.rawValue) {
                    chain = RuleAttributes.string(raw, value)
                } else if type == UInt16(NFTA_RULE_EXPRESSIONS.rawValue) {
                    RuleAttributes.each(raw, value) { type, element in
                        guard type == UInt16(NFTA_LIST_ELEM.rawValue) else { return }
                        var name: [UInt8] = [UInt8(ascii: "?")]
                        RuleAttributes.each(raw, element) { type, value in
                            if type == UInt16(NFTA_EXPR_NAME.rawValue) { name = RuleAttributes.string(raw, value) }
                        }
                        names.append(name)
                    }
                }
            }
            return shapeBytes(chain: chain, names: &names)
        }
    }

    static func shapeBytes(chain: [UInt8], names: inout [[UInt8]]) -> [UInt8] {
        names.sort(by: bytesBefore)
        var out = chain
        out.append(UInt8(ascii: ":"))
        for (i, name) in names.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out += name
        }
        return out
    }

    static func bytesBefore(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.lexicographicallyPrecedes(b)
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
            // The handle straight from NFTA_RULE_HANDLE (big endian); a message without one is skipped.
            guard let handle = RuleAttributes.handle(bytes) else { return }
            rules.append(ForeignRule(handle: handle, message: bytes))
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

/// A NEWRULE message's attributes, read without libnftnl.
enum RuleAttributes {
    /// NFTA_RULE_HANDLE (a big-endian u64), or nil when absent or malformed.
    static func handle(_ message: [UInt8]) -> UInt64? {
        message.withUnsafeBytes { raw -> UInt64? in
            guard raw.count >= 20 else { return nil }
            let length = min(raw.count, Int(raw.loadUnaligned(as: UInt32.self)))
            guard length >= 20 else { return nil }
            var handle: UInt64?
            each(raw, 20..<length) { type, value in
                guard handle == nil, type == UInt16(NFTA_RULE_HANDLE.rawValue), value.count == 8 else { return }
                handle = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: value.lowerBound, as: UInt64.self))
            }
            return handle
        }
    }

    /// Calls `body` with each attribute's type (flags masked off) and value range in `range` of
    /// `raw`, without building a list.
    static func each(_ raw: UnsafeRawBufferPointer, _ range: Range<Int>, _ body: (UInt16, Range<Int>) -> Void) {
        var at = range.lowerBound
        while at + 4 <= range.upperBound {
            let length = Int(raw.loadUnaligned(fromByteOffset: at, as: UInt16.self))
            guard length >= 4, at + length <= range.upperBound else { return }
            body(raw.loadUnaligned(fromByteOffset: at + 2, as: UInt16.self) & 0x3fff, at + 4..<at + length)
            at += Netlink.align(length)
        }
    }

    /// A string attribute's bytes without its trailing NULs.
    static func string(_ raw: UnsafeRawBufferPointer, _ value: Range<Int>) -> [UInt8] {
        var end = value.upperBound
        while end > value.lowerBound && raw[end - 1] == 0 { end -= 1 }
        return Array(raw[value.lowerBound..<end])
    }
}
