/// `source=` on `<portForward>`: the prefixes allowed to use a forward (README "Restricting a
/// forward to some sources"). Everything about the attribute lives here: its grammar, the
/// `[policy] require_source_ports` check, and the per-mapping filters a plan carries.
public enum SourceList {
    /// Most prefixes one `source=` may list (README "Restricting a forward to some sources"): a
    /// packet's cost does not grow with it, but the kernel's insert does, with the square of the
    /// set's elements (pipapo): 1,000 IPv4 prefixes take ~0.2 s at a start, 4,096 took 3.2 s.
    public static let maxPrefixes = 1024

    /// Parses `source=`: IPv4/IPv6 prefixes separated by white space; a bare address is a /32 or
    /// /128. Refuses, with one line naming the forward and the bad word: an empty list, a word
    /// that is not a prefix, host bits set (`10.0.0.1/8`: did you mean 10.0.0.0/8?), a
    /// duplicate, more than `maxPrefixes`.
    public static func parse(_ text: String, path: String, attribute: String = "source") throws(VirtPortError) -> [IPPrefix] {
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }).map(String.init)
        if words.isEmpty {
            throw .invalid("\(path): \(attribute)=\"\" names no prefix (leave \(attribute)= out to allow every client)")
        }
        if words.count > maxPrefixes {
            throw .invalid("\(path): \(attribute)= names \(words.count) prefixes, more than \(maxPrefixes)")
        }
        var out: [IPPrefix] = []
        var seen = Set<IPPrefix>()
        for word in words {
            let p = try prefix(word, path: path, attribute: attribute)
            if !seen.insert(p).inserted { throw .invalid("\(path): \(attribute)= names \(p) twice") }
            out.append(p)
        }
        return out
    }

    static func prefix(_ word: String, path: String, attribute: String) throws(VirtPortError) -> IPPrefix {
        if let a = IPAddress(word) { return IPPrefix(a, prefix: a.bytes.count * 8) }
        if let p = IPPrefix(parsing: word) { return p }
        let parts = word.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        if parts.count == 2, let a = IPAddress(String(parts[0])), let n = Int(parts[1]), n >= 0, n <= a.bytes.count * 8 {
            throw .invalid("\(path): \(attribute)=\"\(Quoted.message(word))\" has host bits set (did you mean \(IPPrefix(a, prefix: n))?)")
        }
        let hint = word.contains(",") ? " (separate prefixes with spaces)" : ""
        throw .invalid("\(path): \(attribute)=\"\(Quoted.message(word))\" is not an IPv4 or IPv6 address or prefix\(hint)")
    }

    /// The attribute's text: the prefixes in their order, a /32 or /128 as a bare address.
    public static func text(_ prefixes: [IPPrefix]) -> String {
        prefixes.map { $0.prefix == $0.network.bytes.count * 8 ? "\($0.network)" : "\($0)" }.joined(separator: " ")
    }

    /// What one `<portForward>` can tell on its own: with `address=`, a list without a prefix of
    /// that family would drop every client.
    public static func check(_ spec: ForwardSpec, path: String) throws(VirtPortError) {
        guard let sources = spec.sources, let address = spec.address else { return }
        if !sources.contains(where: { $0.family == address.family }) {
            let name = address.family == .ipv4 ? "IPv4" : "IPv6"
            throw .invalid("\(path): source= names no \(name) prefix, but address=\"\(address)\" is \(name): every client would be dropped")
        }
    }
}

/// One mapping's source filter, as planned, journaled and put in the kernel: the forward's host
/// side and the prefixes allowed to use it.
public struct SourceFilter: Hashable, Sendable {
    public var proto: IPProto
    /// nil: every local address (then both families are filtered).
    public var hostAddress: IPAddress?
    public var dev: String?
    public var ports: PortRange
    /// The allowed prefixes, as written.
    public var prefixes: [IPPrefix]

    public init(proto: IPProto, hostAddress: IPAddress?, dev: String?, ports: PortRange, prefixes: [IPPrefix]) {
        self.proto = proto
        self.hostAddress = hostAddress
        self.dev = dev
        self.ports = ports
        self.prefixes = prefixes
    }

    /// The filter of `m` with `prefixes`.
    public init(_ m: Mapping, prefixes: [IPPrefix]) {
        self.init(proto: m.proto, hostAddress: m.hostAddress, dev: m.dev, ports: m.hostPorts, prefixes: prefixes)
    }

    /// Whether this is `m`'s filter (same host side).
    public func filters(_ m: Mapping) -> Bool {
        m.proto == proto && m.hostAddress == hostAddress && m.dev == dev && m.hostPorts == ports
    }

    /// The forward it filters, without the list: two filters with the same identity are one
    /// forward whose list changed.
    public var identity: String { Mapping.hostKey(proto: proto, hostAddress: hostAddress, dev: dev, ports: ports) }

    /// The families the filter applies to: the host address's, or both.
    public var families: [Family] { hostAddress.map { [$0.family] } ?? [.ipv4, .ipv6] }

    /// `source=`'s text.
    public var text: String { SourceList.text(prefixes) }

    /// The name of the drop counter of this forward for `family`: `tcp4_8080`, `udp6_5900_5999`,
    /// `tcp4_8080_eth0`, `tcp4_8080_cb007105` (host address in hex). Letters, digits, `_`, `.`
    /// and `-` only, so `nft list ruleset` output loads back.
    public func counterName(_ family: Family) -> String {
        var s = "\(proto.rawValue)\(family == .ipv4 ? "4" : "6")_\(ports.start)"
        if ports.end != ports.start { s += "_\(ports.end)" }
        if let dev { s += "_\(dev)" }
        if let hostAddress {
            let digits = Array("0123456789abcdef")
            s += "_" + String(hostAddress.bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })
        }
        return s
    }

    /// The prefixes of `family` the kernel holds: without duplicates and without a prefix another
    /// one of the list covers (the kernel refuses overlapping intervals), in address order.
    public func kernelPrefixes(_ family: Family) -> [IPPrefix] {
        let mine = prefixes.filter { $0.family == family }.sorted { $0.prefix < $1.prefix }
        var out: [IPPrefix] = []
        for p in mine where !out.contains(where: { $0.contains(p.network) }) { out.append(p) }
        return out.sorted { $0.network.bytes.lexicographicallyPrecedes($1.network.bytes) }
    }
}

/// The plan's source filters: one per mapping of a forward with `source=`, and the policy.
public enum SourceFilterPlanner {
    /// The filters of `mappings` (the plan of `metadata`), each mapping taking the list of the
    /// `<portForward>` it came from (forwards never overlap, so one matches).
    /// - Throws: `.invalid` naming `[policy] require_source_ports` when a mapping on such a port
    ///   has no list, or a list with a /0 prefix (every address of a family).
    public static func plan(_ metadata: VirtPortMetadata?, mappings: [Mapping], policy: Policy) throws(VirtPortError) -> [SourceFilter] {
        let forwards = metadata?.forwards ?? []
        var out: [SourceFilter] = []
        // The common case: no list anywhere and no policy on it.
        if policy.requireSourcePorts.isEmpty && !forwards.contains(where: { $0.sources != nil }) { return out }
        for m in mappings {
            let index = forwards.firstIndex { f in
                f.proto == m.proto && f.address == m.hostAddress && f.dev == m.dev
                    && f.ranges.contains { !$0.exclude && $0.ports.contains(m.hostPorts.start) }
            }
            let sources = index.flatMap { forwards[$0].sources }
            let path = index.map { "portForward[\($0 + 1)]" } ?? "portForward"
            var required: UInt16?
            for r in policy.requireSourcePorts where required == nil && m.hostPorts.overlaps(r) {
                required = max(r.start, m.hostPorts.start)
            }
            if let port = required {
                let setting = Policy.setting(SourceList.policyKey, list: policy.requireSourcePorts.map(\.description))
                guard let sources else {
                    throw .invalid("\(path): host port \(m.proto) \(port) needs source= (\(setting))")
                }
                if let all = sources.first(where: { $0.prefix == 0 }) {
                    throw .invalid("\(path): host port \(m.proto) \(port) may not be open to every address (source= names \(all); \(setting))")
                }
            }
            if let sources { out.append(SourceFilter(m, prefixes: sources)) }
        }
        return out
    }
}

// MARK: - The kind's places in the core (ForwardAttributes, KindValues)

extension SourceList {
    /// The `[policy]` key (declared by `SourceFilterKind.policyKeys`).
    public static let policyKey = "require_source_ports"

    /// `source=` in `ForwardAttributes.all`.
    public static let attribute = Attribute()

    public struct Attribute: ForwardAttribute {
        public var name: String { "source" }
        public func parse(_ text: String, into spec: inout ForwardSpec, path: String, attribute: String) throws(VirtPortError) {
            spec.sources = try SourceList.parse(text, path: path, attribute: attribute)
        }
        public func check(_ spec: ForwardSpec, path: String) throws(VirtPortError) { try SourceList.check(spec, path: path) }
        public func text(_ spec: ForwardSpec) -> String? { spec.sources.map(SourceList.text) }
        public func plan(_ plan: inout Plan, metadata: VirtPortMetadata, policy: Policy) throws(VirtPortError) {
            let filters = try SourceFilterPlanner.plan(metadata, mappings: plan.mappings, policy: policy)
            if !filters.isEmpty { plan.sourceFilters = filters }
        }
        public var addOption: (value: String, help: String)? {
            ("PREFIX", "only these clients may use the forward (source=; a bare address is a /32 or /128)")
        }
    }
}

extension ForwardSpec {
    /// `source=`: the only clients allowed (README "Restricting a forward to some sources"); nil: every client.
    public var sources: [IPPrefix]? {
        get { attributes["source"] }
        set { attributes["source"] = newValue }
    }
}

extension Plan {
    /// One per mapping of a forward with `source=` (`SourceFilterPlanner`).
    public var sourceFilters: [SourceFilter] {
        get { kinds["source", as: [SourceFilter].self] ?? [] }
        set { kinds["source"] = newValue.isEmpty ? nil : newValue }
    }
}

extension Policy {
    /// `[policy] require_source_ports`: host ports a forward may use only with a `source=` list
    /// (and none of its prefixes /0).
    public var requireSourcePorts: [PortRange] {
        get { kinds[SourceList.policyKey, as: [PortRange].self] ?? [] }
        set { kinds[SourceList.policyKey] = newValue.isEmpty ? nil : newValue }
    }
}
