#if canImport(Glibc)
import Glibc
#endif
import CNftnl
public import VirtPortCore

/// The kernel's name for a forward's filter.
public typealias SourceFilterElement = SourceFilter

/// One forward's drop counter, read back.
public struct SourceFilterCounter: Sendable, Hashable {
    public var name: String
    public var packets: UInt64
    public var bytes: UInt64
}

/// `table inet <table>_src`: virtport's per-forward source filters (README "Restricting a forward
/// to some sources"). A table of its own, beside `table inet <table>`, so an existing forwards
/// table needs no change and the filter's rules are created with the table, once.
///
///     table inet virtport_src {
///         map drop4      { type inet_service . inet_proto . ipv4_addr : counter; flags interval }
///         set allow4     { type ipv4_addr . inet_service . inet_proto . ipv4_addr; flags interval }
///         map drop4_dev  { type inet_service . inet_proto . ifname . ipv4_addr : counter; flags interval }
///         set allow4_dev { type ipv4_addr . inet_service . inet_proto . ifname . ipv4_addr; flags interval }
///         … drop6, allow6, drop6_dev, allow6_dev with ipv6_addr
///         counter tcp4_8080 { }                      one per filtered forward and family
///         set ports4 { type inet_service; flags interval }   every filtered forward's host ports
///         chain prerouting { type nat hook prerouting priority dstnat - 10
///             meta nfproto ipv4 th dport @ports4 jump filter4
///             meta nfproto ipv6 th dport @ports6 jump filter6 }
///         chain filter4 {
///             ip saddr . th dport . meta l4proto . ip daddr @allow4 accept
///             ip saddr . th dport . meta l4proto . iifname . ip daddr @allow4_dev accept
///             th dport . meta l4proto . ip daddr @drop4 fib daddr type local
///                 counter name th dport . meta l4proto . ip daddr map @drop4 drop
///             … the same for drop4_dev }
///         chain filter6 { … } }
///
/// A forward's key is its host side: host port range, protocol, [interface,] host address
/// (0.0.0.0/0 or ::/0 for every local address), as intervals (pipapo: concatenated ranges), so
/// the per-packet cost is a few set lookups whatever the number of forwards and prefixes. The
/// most selective field leads each key (pipapo walks the elements every earlier field matched):
/// the source in the allow sets, the port in the drop maps. Forwards never overlap on that key
/// (the planner and the journal refuse it), so a packet has one judge.
///
/// The base chain is a nat chain: the kernel runs nat chains for a connection's first packet only
/// (before it has a NAT binding), so an established flow never crosses this table. A drop there
/// drops that packet and its unconfirmed conntrack entry; a list that narrows is enforced on open
/// connections by deleting their entries (`cutFlows`): their next packet is a first one again.
public enum SourceFilterTable {
    /// The table's name for virtport's inet table `table`.
    public static func name(_ table: String) -> String { table + "_src" }

    /// Before virtport's DNAT (nat prerouting, -100: a nat chain after one that bound the
    /// connection's destination is skipped), after conntrack (-200).
    static let priority: Int32 = -110
    /// Most prefixes one forward may list (`SourceList.maxPrefixes`).
    public static let maxPrefixes = SourceList.maxPrefixes

    struct Variant: Hashable {
        var family: Family
        var hasDev: Bool
        var suffix: String { (family == .ipv4 ? "4" : "6") + (hasDev ? "_dev" : "") }
        var dropMap: String { "drop" + suffix }
        var allowSet: String { "allow" + suffix }
        /// The forward's key, most selective field first: pipapo's cost grows with the elements
        /// every field before the deciding one matches (its refill walks them), so the port leads
        /// and the address that is 0.0.0.0/0 for most forwards comes last.
        var forwardFields: [KeyField] { [.port, .proto] + (hasDev ? [.ifname] : []) + [.address(family)] }
        /// The source first: of 1,000 prefixes, one or two match it.
        var allowFields: [KeyField] { [.address(family)] + forwardFields }
        /// Words the source address takes before the forward's key in the registers.
        var sourceWords: Int { KeyField.address(family).paddedLength / 4 }
        static let all = [Family.ipv4, .ipv6].flatMap { f in [false, true].map { Variant(family: f, hasDev: $0) } }
    }

    static func length(_ fields: [KeyField]) -> Int { fields.reduce(0) { $0 + $1.paddedLength } }

    /// The filter's elements: one drop-map entry per family, and one allow interval per prefix.
    struct Elements {
        var drops: [(variant: Variant, start: [UInt8], end: [UInt8], counter: String)] = []
        var allows: [(variant: Variant, start: [UInt8], end: [UInt8])] = []
    }

    static func pad(_ bytes: [UInt8], _ field: KeyField) -> [UInt8] {
        bytes + [UInt8](repeating: 0, count: field.paddedLength - bytes.count)
    }

    /// Start and end key of the forward part (iifname, daddr, l4proto, dport).
    static func forwardKey(_ f: SourceFilterElement, _ v: Variant) -> (start: [UInt8], end: [UInt8]) {
        var start: [UInt8] = [], end: [UInt8] = []
        start += pad([UInt8(f.ports.start >> 8), UInt8(f.ports.start & 0xff)], .port)
        end += pad([UInt8(f.ports.end >> 8), UInt8(f.ports.end & 0xff)], .port)
        start += pad([f.proto.number], .proto)
        end += pad([f.proto.number], .proto)
        if v.hasDev, let dev = f.dev {
            start += pad(Array(dev.utf8), .ifname)
            end += pad(Array(dev.utf8), .ifname)
        }
        let n = v.family == .ipv4 ? 4 : 16
        if let a = f.hostAddress {
            start += pad(a.bytes, .address(v.family))
            end += pad(a.bytes, .address(v.family))
        } else {
            start += pad([UInt8](repeating: 0, count: n), .address(v.family))
            end += pad([UInt8](repeating: 0xff, count: n), .address(v.family))
        }
        return (start, end)
    }

    /// First and last address of `p`.
    static func bounds(_ p: IPPrefix) -> (first: [UInt8], last: [UInt8]) {
        let first = p.network.bytes
        var last = first
        for i in last.indices {
            let keep = min(max(p.prefix - i * 8, 0), 8)
            last[i] |= keep == 8 ? 0 : UInt8(0xff >> keep)
        }
        return (first, last)
    }

    static func elements(_ f: SourceFilterElement) -> Elements {
        var out = Elements()
        for family in f.families {
            let v = Variant(family: family, hasDev: f.dev != nil)
            let key = forwardKey(f, v)
            out.drops.append((v, key.start, key.end, f.counterName(family)))
            for p in f.kernelPrefixes(family) {
                let b = bounds(p)
                out.allows.append((v, pad(b.first, .address(family)) + key.start, pad(b.last, .address(family)) + key.end))
            }
        }
        return out
    }

    /// Checks what the kernel would refuse, with one line naming the forward.
    static func validate(_ f: SourceFilterElement) throws(NetfilterError) {
        if let dev = f.dev, dev.isEmpty || dev.utf8.count > maxInterfaceNameLength || dev.utf8.contains(0) {
            throw NetfilterError(errno: EINVAL, operation: "source filter of \(f.proto) \(f.ports)",
                                 detail: "interface name \"\(dev)\" is not 1-\(maxInterfaceNameLength) bytes")
        }
        if f.prefixes.count > maxPrefixes {
            throw NetfilterError(errno: EINVAL, operation: "source filter of \(f.proto) \(f.ports)",
                                 detail: "\(f.prefixes.count) prefixes, more than \(maxPrefixes)")
        }
    }

    // MARK: - Rules

    /// The prerouting rule of one variant.
    /// The forward's key fields from register word `first` on; returns the next free word.
    static func loadForwardKey(_ v: Variant, at first: Int, into rule: inout [RuleExpression]) -> Int {
        var word = first
        for field in v.forwardFields {
            let dreg = register(word: word)
            switch field {
            case .ifname: rule.append(.meta(NFT_META_IIFNAME, dreg: dreg))
            case .address(let family):  // ip daddr / ip6 daddr
                rule.append(.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: family == .ipv4 ? 16 : 24,
                                     length: UInt32(field.length), dreg: dreg))
            case .proto: rule.append(.meta(NFT_META_L4PROTO, dreg: dreg))
            case .port: rule.append(.payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, length: 2, dreg: dreg))
            }
            word += field.paddedLength / 4
        }
        return word
    }

    /// The port set of `family`: every filtered forward's host ports (merged intervals).
    static func portSet(_ family: Family) -> String { family == .ipv4 ? "ports4" : "ports6" }
    /// The regular chain `family`'s packets to a filtered port jump to.
    static func filterChain(_ family: Family) -> String { family == .ipv4 ? "filter4" : "filter6" }

    /// `meta nfproto F th dport @portsF jump filterF`: the base chain's only work for a new
    /// connection to no filtered port is this one small interval look-up. (No `ct direction
    /// original`: a nat chain sees a connection's first packet, which is the original direction.)
    static func prefilter(_ family: Family) -> [RuleExpression] {
        let r0 = register(word: 0)
        return RuleExpression.nfproto(family) + [
            .payload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, length: 2, dreg: r0),
            .lookup(set: portSet(family), sreg: r0, dreg: nil),
            .jump(filterChain(family)),
        ]
    }

    /// `ip saddr . th dport . meta l4proto [. iifname] . ip daddr @allow4 accept`: a listed client
    /// of a filtered forward is done with this table after one look-up (the common packet).
    static func allowRule(_ v: Variant) -> [RuleExpression] {
        // `meta nfproto` again: without it nft lists the addresses as raw payload it cannot load back.
        var rule = RuleExpression.nfproto(v.family)
        let r0 = register(word: 0)
        rule.append(.payload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: v.family == .ipv4 ? 12 : 8,
                             length: UInt32(KeyField.address(v.family).length), dreg: r0))
        _ = loadForwardKey(v, at: v.sourceWords, into: &rule)
        rule.append(.lookup(set: v.allowSet, sreg: r0, dreg: nil))
        rule.append(.accept)
        return rule
    }

    /// `th dport . meta l4proto [. iifname] . ip daddr @drop4 fib daddr type local counter name
    /// th dport . meta l4proto [. iifname] . ip daddr map @drop4 drop`: after the allow rules, a
    /// filtered forward's packet is not from its list.
    static func dropRule(_ v: Variant) -> [RuleExpression] {
        var rule = RuleExpression.nfproto(v.family)
        let r0 = register(word: 0)
        let word = loadForwardKey(v, at: 0, into: &rule)
        rule.append(.lookup(set: v.dropMap, sreg: r0, dreg: nil))
        // Only traffic to a host address (a forwarded connection passing through keeps its way).
        let spare = register(word: word)
        rule.append(.fibDaddrType(dreg: spare))
        rule.append(.cmp(sreg: spare, op: NFT_CMP_EQ, data: RuleExpression.hostOrder(2 /* RTN_LOCAL */)))
        rule.append(.objrefMap(map: v.dropMap, sreg: r0))
        rule.append(.drop)
        return rule
    }

    /// The base chain (type nat: first packets only), then per family the chain its filtered
    /// ports jump to: allow rules, then drop rules.
    static var chains: [TableSkeleton.Chain] {
        [TableSkeleton.Chain(name: "prerouting", hook: NF_INET_PRE_ROUTING, priority: priority,
                             rules: [Family.ipv4, .ipv6].map(prefilter), type: "nat")]
            + [Family.ipv4, .ipv6].map { family in
                let mine = Variant.all.filter { $0.family == family }
                return TableSkeleton.Chain(name: filterChain(family), hook: nil, priority: 0,
                                           rules: mine.map(allowRule) + mine.map(dropRule), type: "filter")
            }
    }

    /// The sorted rule shapes of this version's table (`NetfilterSession.shape`).
    static let skeletonShapes: [[UInt8]] = NetfilterSession.shapes(of: chains)

    /// Whether `filters` cut the connection whose original tuple is `flow`: one of them judges it
    /// (same protocol, a host port of its range, its host address if it has one) and its list
    /// does not hold the client. With `dev=` the interface a connection came in on is not in its
    /// tuple: a connection another forward on the same port took is cut too, and its next packet
    /// takes that forward again. The host's own connections (`output`: source and destination the
    /// same local address) are never judged.
    static func cuts(_ flow: Conntrack.Tuple, _ filters: [SourceFilterElement]) -> Bool {
        guard flow.source != flow.destination else { return false }
        let family = flow.source.family
        return filters.contains { f in
            f.proto.number == flow.proto && f.ports.contains(flow.destinationPort) && f.families.contains(family)
                && (f.hostAddress.map { $0 == flow.destination } ?? true)
                && !f.prefixes.contains { $0.family == family && $0.contains(flow.source) }
        }
    }

    // MARK: - Port sets

    /// The merged host port ranges of `filters` that apply to `family`.
    static func ports(_ filters: [SourceFilterElement], _ family: Family) -> [PortRange] {
        let ranges = filters.filter { $0.families.contains(family) }.map(\.ports).sorted()
        var out: [PortRange] = []
        for r in ranges {
            if let last = out.last, Int(r.start) <= Int(last.end) + 1 {
                out[out.count - 1] = PortRange(last.start, max(last.end, r.end))
            } else {
                out.append(r)
            }
        }
        return out
    }

    /// Adds or deletes port intervals (start, and end + 1 flagged INTERVAL_END unless it is 65535).
    static func appendPorts(to batch: inout NetlinkBatch, table: String, family: Family, adding: Bool, _ ranges: [PortRange]) {
        guard !ranges.isEmpty else { return }
        var kernel: [(key: [UInt8], data: [UInt8]?, flags: UInt32)] = []
        for r in ranges {
            kernel.append(([UInt8(r.start >> 8), UInt8(r.start & 0xff)], nil, 0))
            if r.end < 65535 {
                let e = r.end + 1
                kernel.append(([UInt8(e >> 8), UInt8(e & 0xff)], nil, UInt32(NFT_SET_ELEM_INTERVAL_END.rawValue)))
            }
        }
        ElementMessages.append(to: &batch, table: table, set: portSet(family), adding: adding, kernel,
                               operation: .object("\(adding ? "add" : "delete") ports in set \(portSet(family)) of table inet \(table)"))
    }

    /// The port sets' change from every filter before to every filter after: merged intervals
    /// that went are deleted, new ones added.
    static func appendPortChange(to batch: inout NetlinkBatch, table: String, before: [SourceFilterElement],
                                 after: [SourceFilterElement], deleting: Bool) {
        for family in [Family.ipv4, .ipv6] {
            let a = Set(ports(before, family)), b = Set(ports(after, family))
            if deleting {
                appendPorts(to: &batch, table: table, family: family, adding: false, a.subtracting(b).sorted())
            } else {
                appendPorts(to: &batch, table: table, family: family, adding: true, b.subtracting(a).sorted())
            }
        }
    }

    // MARK: - Batch parts

    /// NEWTABLE with NLM_F_EXCL (EEXIST when someone created it first), the sets, the chain.
    static func appendSkeleton(to batch: inout NetlinkBatch, table: String, exclusive: Bool = true) {
        TableSkeleton.appendTable(to: &batch, table: table, flags: Netlink.create | (exclusive ? Netlink.excl : 0),
                                  operation: exclusive ? .createTable(table) : .object("add table inet \(table)"))
        var id: UInt32 = 1
        for v in Variant.all {
            appendSet(to: &batch, table: table, name: v.dropMap, id: id, fields: v.forwardFields, object: true)
            appendSet(to: &batch, table: table, name: v.allowSet, id: id + 1, fields: v.allowFields, object: false)
            id += 2
        }
        for family in [Family.ipv4, .ipv6] {
            TableSkeleton.appendSet(to: &batch, table: table, name: portSet(family), id: id, keyType: KeyField.port.typeID,
                                    keyLength: KeyField.port.length, data: nil, flags: UInt32(NFT_SET_INTERVAL.rawValue))
            id += 1
        }
        // The regular chains first: the base chain's rules jump to them.
        for c in chains.reversed() { TableSkeleton.appendChain(to: &batch, table: table, chain: c) }
        for c in chains.reversed() {
            for r in c.rules { TableSkeleton.appendRule(to: &batch, table: table, chain: c.name, r) }
        }
    }

    static func appendSet(to batch: inout NetlinkBatch, table: String, name: String, id: UInt32, fields: [KeyField], object: Bool) {
        let s = nftnl_set_alloc()!
        defer { nftnl_set_free(s) }
        nftnl_set_set_str(s, UInt16(NFTNL_SET_TABLE.rawValue), table)
        nftnl_set_set_str(s, UInt16(NFTNL_SET_NAME.rawValue), name)
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_FAMILY.rawValue), TableFamily.inet.nfproto)
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_KEY_TYPE.rawValue), concatType(fields))
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_KEY_LEN.rawValue), UInt32(length(fields)))
        var flags = UInt32(NFT_SET_INTERVAL.rawValue | NFT_SET_CONCAT.rawValue)
        if object {
            flags |= UInt32(NFT_SET_OBJECT.rawValue)
            nftnl_set_set_u32(s, UInt16(NFTNL_SET_OBJ_TYPE.rawValue), GuardTable.objectCounter)
        }
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_FLAGS.rawValue), flags)
        let lengths = fields.map { UInt8($0.length) }
        lengths.withUnsafeBytes {
            _ = nftnl_set_set_data(s, UInt16(NFTNL_SET_DESC_CONCAT.rawValue), $0.baseAddress, UInt32($0.count))
        }
        nftnl_set_set_u32(s, UInt16(NFTNL_SET_ID.rawValue), id)
        batch.append(NFT_MSG_NEWSET, flags: Netlink.create, family: UInt16(TableFamily.inet.nfproto),
                     operation: .object("add \(object ? "map" : "set") \(name) to table inet \(table)")) {
            nftnl_set_nlmsg_build_payload($0, s)
        }
    }

    static func appendCounter(to batch: inout NetlinkBatch, table: String, _ name: String, adding: Bool) {
        let o = nftnl_obj_alloc()!
        defer { nftnl_obj_free(o) }
        nftnl_obj_set_str(o, UInt16(NFTNL_OBJ_TABLE), table)
        nftnl_obj_set_str(o, UInt16(NFTNL_OBJ_NAME), name)
        nftnl_obj_set_u32(o, UInt16(NFTNL_OBJ_FAMILY), TableFamily.inet.nfproto)
        nftnl_obj_set_u32(o, UInt16(NFTNL_OBJ_TYPE), GuardTable.objectCounter)
        batch.append(adding ? NFT_MSG_NEWOBJ : NFT_MSG_DELOBJ, flags: adding ? Netlink.create : 0,
                     family: UInt16(TableFamily.inet.nfproto),
                     operation: .object("\(adding ? "add" : "delete") counter \(name) of table inet \(table)")) {
            nftnl_obj_nlmsg_build_payload($0, o)
        }
    }

    /// Interval elements (KEY and KEY_END) of one set, split under `NetlinkBatch.messageBudget`.
    static func appendIntervals(to batch: inout NetlinkBatch, table: String, set: String, adding: Bool,
                                _ elements: [(start: [UInt8], end: [UInt8], objref: String?)], operation: String) {
        guard !elements.isEmpty else { return }
        let perMessage = max(1, NetlinkBatch.messageBudget / (40 + 2 * (elements[0].start.count) + 32))
        var first = 0
        while first < elements.count {
            let chunk = elements[first..<min(first + perMessage, elements.count)]
            let s = nftnl_set_alloc()!
            nftnl_set_set_str(s, UInt16(NFTNL_SET_TABLE.rawValue), table)
            nftnl_set_set_str(s, UInt16(NFTNL_SET_NAME.rawValue), set)
            for element in chunk {
                let e = nftnl_set_elem_alloc()!
                element.start.withUnsafeBytes {
                    _ = nftnl_set_elem_set(e, UInt16(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count))
                }
                element.end.withUnsafeBytes {
                    _ = nftnl_set_elem_set(e, UInt16(NFTNL_SET_ELEM_KEY_END), $0.baseAddress, UInt32($0.count))
                }
                if adding, let objref = element.objref { nftnl_set_elem_set_str(e, UInt16(NFTNL_SET_ELEM_OBJREF), objref) }
                nftnl_set_elem_add(s, e)
            }
            batch.append(adding ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM, flags: adding ? Netlink.create : 0,
                         family: UInt16(TableFamily.inet.nfproto), operation: .object(operation)) {
                nftnl_set_elems_nlmsg_build_payload($0, s)
            }
            nftnl_set_free(s)
            first += perMessage
        }
    }

    /// Adds or deletes whole filters: counters first (adding) or last (deleting), then the
    /// drop-map entries and the allow intervals, grouped by set.
    static func appendFilters(to batch: inout NetlinkBatch, table: String, adding: Bool, _ filters: [SourceFilterElement]) {
        guard !filters.isEmpty else { return }
        var all = Elements()
        for f in filters {
            let e = elements(f)
            all.drops += e.drops
            all.allows += e.allows
        }
        if adding { for d in all.drops { appendCounter(to: &batch, table: table, d.counter, adding: true) } }
        appendElements(to: &batch, table: table, adding: adding, all)
        if !adding { for d in all.drops { appendCounter(to: &batch, table: table, d.counter, adding: false) } }
    }

    static func appendElements(to batch: inout NetlinkBatch, table: String, adding: Bool, _ all: Elements) {
        let verb = adding ? "add" : "delete"
        for v in Variant.all {
            // Adding: the allow intervals before the forward is filtered at all; deleting: after.
            let drops = all.drops.filter { $0.variant == v }.map { (start: $0.start, end: $0.end, objref: Optional($0.counter)) }
            let allows = all.allows.filter { $0.variant == v }.map { (start: $0.start, end: $0.end, objref: String?.none) }
            if adding {
                appendIntervals(to: &batch, table: table, set: v.allowSet, adding: true, allows,
                                operation: "add elements to set \(v.allowSet) of table inet \(table)")
            }
            appendIntervals(to: &batch, table: table, set: v.dropMap, adding: adding, drops,
                            operation: "\(verb) elements in map \(v.dropMap) of table inet \(table)")
            if !adding {
                appendIntervals(to: &batch, table: table, set: v.allowSet, adding: false, allows,
                                operation: "delete elements in set \(v.allowSet) of table inet \(table)")
            }
        }
    }

    /// What changes `old` into `new`, filter by filter: a forward whose list changed keeps its
    /// drop-map entry and counter and only gains or loses allow intervals.
    static func appendChange(to batch: inout NetlinkBatch, table: String, from old: [SourceFilterElement],
                             to new: [SourceFilterElement], allBefore: [SourceFilterElement], allAfter: [SourceFilterElement]) {
        let before = Dictionary(old.map { ($0.identity, $0) }, uniquingKeysWith: { a, _ in a })
        let after = Dictionary(new.map { ($0.identity, $0) }, uniquingKeysWith: { a, _ in a })
        let gone = old.filter { after[$0.identity] == nil }
        let added = new.filter { before[$0.identity] == nil }
        var lose = Elements(), gain = Elements()
        for f in new {
            guard let was = before[f.identity], was != f else { continue }
            let a = elements(was), b = elements(f)
            let bKeys = Set(b.allows.map { $0.start + $0.end }), aKeys = Set(a.allows.map { $0.start + $0.end })
            lose.allows += a.allows.filter { !bKeys.contains($0.start + $0.end) }
            gain.allows += b.allows.filter { !aKeys.contains($0.start + $0.end) }
        }
        appendFilters(to: &batch, table: table, adding: false, gone)
        appendElements(to: &batch, table: table, adding: false, lose)
        appendPortChange(to: &batch, table: table, before: allBefore, after: allAfter, deleting: true)
        appendPortChange(to: &batch, table: table, before: allBefore, after: allAfter, deleting: false)
        appendElements(to: &batch, table: table, adding: true, gain)
        appendFilters(to: &batch, table: table, adding: true, added)
    }
}

/// `table inet <table>_src` over virtport's session.
extension NetfilterSession {
    /// The source-filter table's name.
    public var sourceFilterTable: String { SourceFilterTable.name(table) }

    /// Changes the filters from `old` (what the kernel holds, from the journal) to `new`, in one
    /// batch. When the table is missing, it is created with `new` (then `old` is moot). Any other
    /// refusal (an element missing, someone's edit): the table is rebuilt with `all` (every
    /// filter the journal holds after the change) in one batch.
    public func changeSourceFilters(from old: [SourceFilterElement], to new: [SourceFilterElement],
                                    all: @autoclosure () -> [SourceFilterElement]) throws(NetfilterError) {
        for f in old + new { try SourceFilterTable.validate(f) }
        let t = sourceFilterTable
        // Every filter before: `all` with this change undone.
        let after = all()
        let changed = Set((old + new).map(\.identity))
        let before = after.filter { !changed.contains($0.identity) } + old
        let failures = try execute {
            SourceFilterTable.appendChange(to: &$0, table: t, from: old, to: new, allBefore: before, allAfter: after)
        }
        if failures.isEmpty { return }
        guard failures.allSatisfy({ $0.error.isMissingObject || $0.error.isExists }) else { throw BatchExchange.combine(failures) }
        try replaceSourceFilters(after)
    }

    /// Rebuilds `table inet <table>_src` with `filters` in one batch (counters start from zero).
    /// No filters: the table is deleted (absent and empty filter the same: nothing).
    public func replaceSourceFilters(_ filters: [SourceFilterElement]) throws(NetfilterError) {
        for f in filters { try SourceFilterTable.validate(f) }
        try self.send([SourceFilterBatchPart.rebuild(filters)])
    }

    /// Deletes the table; no error when it is absent.
    public func deleteSourceFilterTable() throws(NetfilterError) {
        let t = sourceFilterTable
        let failures = try execute { TableSkeleton.appendDeleteTable(to: &$0, table: t) }
        if !failures.isEmpty { throw BatchExchange.combine(failures) }
    }

    /// Whether the table's rules are this version's (each rule's chain and expression kinds, as
    /// `skeletonIsIntact` compares `table inet <table>`'s): false for a table an older virtport
    /// built (a filter chain that judged every packet, `ct direction original`), one whose rules
    /// were flushed, or an absent one. One rule dump of the table.
    public func sourceFilterSkeletonIsIntact() throws(NetfilterError) -> Bool {
        let rules = try dumpRules(nfproto: UInt16(NFPROTO_INET), table: sourceFilterTable, chain: nil) ?? []
        let expected = SourceFilterTable.skeletonShapes
        guard rules.count == expected.count else { return false }
        return rules.map { Self.shape($0.message) }.sorted(by: Self.bytesBefore) == expected
    }

    /// Deletes the connection tracking entries of the connections `filters` do not allow: a
    /// filtered forward's connections (a DNAT took them) from a client its list does not hold.
    /// Their next packet finds no entry, so it is a first packet again and meets the table's nat
    /// chain, which drops it: how a list that narrows (a prefix removed, a list given to a forward,
    /// a table put back) cuts open connections at once (README "Restricting a forward to some
    /// sources"). The connections come from the forwards' flow record (`flows4`/`flows6` of
    /// `table inet <table>`, README "Connection tracking"), deleted by tuple; a record that is
    /// absent or full: one conntrack dump per family instead, its entries with a destination NAT.
    /// Entries already gone are not an error.
    ///
    /// Wraps NFT_MSG_GETSETELEM (or IPCTNL_MSG_CT_GET), IPCTNL_MSG_CT_DELETE; needs CAP_NET_ADMIN.
    @discardableResult
    public func cutFlows(outside filters: [SourceFilterElement]) throws(NetfilterError) -> ConntrackCleanup {
        var result = ConntrackCleanup()
        for set in FlowSet.all {
            let mine = filters.filter { $0.families.contains(set.family) }
            if mine.isEmpty { continue }
            if try forgetRecordedFlows(set, record: nil, what: "filtered clients", result: &result, matching: {
                SourceFilterTable.cuts($0, mine)
            }) { continue }
            result.walks += 1
            var requests: [[UInt8]] = []
            try eachConntrackEntry(family: set.family) { entry in
                guard entry.status & Conntrack.statusDestinationNAT != 0, SourceFilterTable.cuts(entry.tuple, mine) else { return }
                requests.append(Conntrack.deleteByTuple(entry.tuple, zone: entry.zone, sequence: takeSequence()))
            }
            if requests.isEmpty { continue }
            result.deleted += try conntrackRequests(requests, operation: "delete conntrack entries of filtered clients (\(set.name))")
        }
        return result
    }

    /// Every drop counter of the table (NFT_MSG_GETOBJ dump); empty when the table is absent.
    public func sourceFilterCounters() throws(NetfilterError) -> [SourceFilterCounter] {
        try counterObjects(table: sourceFilterTable, family: .inet)
            .map { SourceFilterCounter(name: $0.name, packets: $0.packets, bytes: $0.bytes) }
            .sorted { $0.name < $1.name }
    }
}

/// The source filters' share of a domain's one netlink batch (`BatchPart`): the change of one
/// domain's filters, or the whole table rebuilt (the first filter, a recovery) or deleted (the
/// last filter gone).
public struct SourceFilterBatchPart: BatchPart {
    enum Operation {
        /// One domain's filters `old` → `new`; `allBefore`/`allAfter`: every domain's (the port sets).
        case change(old: [SourceFilter], new: [SourceFilter], allBefore: [SourceFilter], allAfter: [SourceFilter])
        /// Delete the table if present, then (when not empty) the skeleton and every filter.
        case rebuild([SourceFilter])
    }
    let operation: Operation

    /// The change from `old` to `new` (one domain's), `allBefore` and `allAfter` being every
    /// domain's filters around it; nil when nothing changes.
    public static func change(from old: [SourceFilter], to new: [SourceFilter], allBefore: [SourceFilter],
                              allAfter: [SourceFilter]) -> SourceFilterBatchPart? {
        Set(old) == Set(new) ? nil
            : SourceFilterBatchPart(operation: .change(old: old, new: new, allBefore: allBefore, allAfter: allAfter))
    }

    /// The table rebuilt with exactly `all` (deleted when `all` is empty).
    public static func rebuild(_ all: [SourceFilter]) -> SourceFilterBatchPart {
        SourceFilterBatchPart(operation: .rebuild(all))
    }

    /// Whether the part rebuilds the table (with this version's skeleton) rather than changing it.
    public var rebuildsTable: Bool {
        if case .rebuild = operation { return true }
        return false
    }

    public func append(to batch: inout NetlinkBatch, session: NetfilterSession) {
        let t = session.sourceFilterTable
        switch operation {
        case .change(let old, let new, let allBefore, let allAfter):
            SourceFilterTable.appendChange(to: &batch, table: t, from: old, to: new, allBefore: allBefore, allAfter: allAfter)
        case .rebuild(let all):
            TableSkeleton.appendDeleteTable(to: &batch, table: t)
            if !all.isEmpty {
                SourceFilterTable.appendSkeleton(to: &batch, table: t)
                SourceFilterTable.appendFilters(to: &batch, table: t, adding: true, all)
                for family in [Family.ipv4, .ipv6] {
                    SourceFilterTable.appendPorts(to: &batch, table: t, family: family, adding: true, SourceFilterTable.ports(all, family))
                }
            }
        }
    }

    public var summary: String {
        switch operation {
        case .change(let old, let new, _, _): "inet src: \(old.count) -> \(new.count) filters"
        case .rebuild(let all): all.isEmpty ? "inet src: delete table" : "inet src: rebuild with \(all.count) filters"
        }
    }
}
