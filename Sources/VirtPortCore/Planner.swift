/// Turns a domain's metadata into mappings: ranges and excludes resolved to contiguous runs,
/// each tied to one guest NIC and guest address, checked against itself and the policy.
/// Pure: the only outside knowledge comes through the resolver.
public enum Planner {
    /// Plans `domain`'s forwards. A domain without metadata plans to no mappings.
    /// - Parameters:
    ///   - resolver: reservation and lease look-ups for forwards without `guest=`.
    ///   - policy: the root-owned limits.
    /// - Returns: the mappings sorted by protocol, host port, host address, device.
    /// - Throws: `VirtPortError.invalid`, one line naming `portForward[N]/range[M]` and the attribute.
    public static func plan(domain: Domain, resolver: some GuestAddressResolver,
                            policy: Policy) throws(VirtPortError) -> Plan {
        guard let metadata = domain.metadata else {
            return Plan(domainName: domain.name, domainUUID: domain.uuid, mappings: [],
                        guards: try GuardPlanner.plan(domain: domain, resolver: resolver, policy: policy))
        }
        // Every portForward yields at least one mapping (runs merge only inside one forward), so
        // this refuses before any range is planned exactly what the check below would.
        if metadata.forwards.count > policy.maxForwardsPerDomain {
            throw .invalid("domain \(Quoted.message(domain.name)): \(metadata.forwards.count) portForward elements exceed the limit of \(policy.maxForwardsPerDomain) forwards per domain (\(policy.setting(.maxForwardsPerDomain)))")
        }
        var segments: [Segment] = []
        for (i, forward) in metadata.forwards.enumerated() {
            segments += try planForward(forward, index: i + 1, domain: domain,
                                        resolver: resolver, policy: policy)
        }
        try checkOverlaps(segments)
        let guards = try GuardPlanner.plan(domain: domain, resolver: resolver, policy: policy)

        let mappings = merged(segments).sorted(by: mappingOrder)
        if mappings.count > policy.maxForwardsPerDomain {
            throw .invalid("domain \(Quoted.message(domain.name)): \(mappings.count) forwards exceed the limit of \(policy.maxForwardsPerDomain) per domain (\(policy.setting(.maxForwardsPerDomain)))")
        }
        let ports = mappings.reduce(0) { $0 + $1.hostPorts.count }
        if ports > policy.maxPortsPerDomain {
            throw .invalid("domain \(Quoted.message(domain.name)): \(ports) host ports exceed the limit of \(policy.maxPortsPerDomain) per domain (\(policy.setting(.maxPortsPerDomain)))")
        }
        var plan = Plan(domainName: domain.name, domainUUID: domain.uuid, mappings: mappings, guards: guards)
        for a in ForwardAttributes.all { try a.plan(&plan, metadata: metadata, policy: policy) }
        return plan
    }

    // MARK: - One portForward

    /// A host run from one `<range>`, before adjacent runs of the same forward are merged.
    struct Segment {
        var mapping: Mapping
        var forward: Int
        var path: String
    }

    static func planForward(_ f: ForwardSpec, index: Int, domain: Domain, resolver: some GuestAddressResolver,
                            policy: Policy) throws(VirtPortError) -> [Segment] {
        let path = "portForward[\(index)]"
        let nic = try interface(for: f.mac, path: path, element: "portForward", domain: domain)
        if let address = f.address, let guest = f.guest, address.family != guest.family {
            throw .invalid("\(path): address=\"\(address)\" is \(name(address.family)) but guest=\"\(guest)\" is \(name(guest.family))")
        }
        if let guest = f.guest, let why = unusableReason(guest) {
            throw .invalid("\(path): guest=\"\(guest)\" is \(why), not a guest address")
        }
        if let dev = f.dev, !MetadataXML.isInterfaceName(dev) {
            throw .invalid("\(path): dev=\"\(dev)\" is not a network interface name")
        }
        try checkAddressPolicy(f, path: path, policy: policy)
        if let address = f.address { try HostChecks.checkLocal(address, path: path, resolver: resolver) }
        if let guest = f.guest {
            try HostChecks.checkGuest(guest, nic: nic, path: path, resolver: resolver, policy: policy)
        }

        // Ranges in order; an exclude cuts the runs collected so far.
        var runs: [(ports: PortRange, guestStart: UInt16, path: String)] = []
        var includes = 0
        for (j, range) in f.ranges.enumerated() {
            let rangePath = "\(path)/range[\(j + 1)]"
            try checkRange(range, path: rangePath)
            if !range.exclude {
                includes += 1
                runs.append((range.ports, range.to ?? range.ports.start, rangePath))
                continue
            }
            var cut: [(ports: PortRange, guestStart: UInt16, path: String)] = []
            var removed = false
            for run in runs {
                guard run.ports.overlaps(range.ports) else {
                    cut.append(run)
                    continue
                }
                removed = true
                if run.ports.start < range.ports.start {
                    cut.append((PortRange(run.ports.start, range.ports.start - 1), run.guestStart, run.path))
                }
                if run.ports.end > range.ports.end {
                    let offset = Int(range.ports.end) + 1 - Int(run.ports.start)
                    cut.append((PortRange(range.ports.end + 1, run.ports.end),
                                UInt16(Int(run.guestStart) + offset), run.path))
                }
            }
            guard removed else {
                throw .invalid("\(rangePath): exclude=\"yes\" removes no port of the ranges before it")
            }
            runs = cut
        }
        if includes == 0 {
            throw .invalid("\(path): has no <range> to forward")
        }
        if runs.isEmpty {
            throw .invalid("\(path): its exclude ranges remove every port")
        }
        for run in runs {
            if let outside = firstPortOutside(run.ports, policy.hostPorts) {
                throw .invalid("\(run.path): host port \(outside) is outside the allowed host ports (\(policy.setting(.hostPorts)))")
            }
        }

        let (guest, source) = resolveGuest(f, nic: nic, resolver: resolver)
        return runs.map { run in
            Segment(mapping: Mapping(proto: f.proto, hostAddress: f.address, dev: f.dev, hostPorts: run.ports,
                                     guestAddress: guest, guestPortStart: run.guestStart, mac: nic.mac,
                                     network: nic.sourceNetwork, guestSource: source),
                    forward: index, path: run.path)
        }
    }

    /// The NIC a `portForward`/`guard` targets: by `mac=`, or the only one.
    static func interface(for mac: MACAddress?, path: String, element: String,
                          domain: Domain) throws(VirtPortError) -> Interface {
        if let mac {
            guard let nic = domain.interfaces.first(where: { $0.mac == mac }) else {
                throw .invalid("\(path): mac=\"\(mac)\" matches no interface of domain \(Quoted.message(domain.name))")
            }
            return nic
        }
        switch domain.interfaces.count {
        case 0: throw .invalid("\(path): domain \(Quoted.message(domain.name)) has no network interface")
        case 1: return domain.interfaces[0]
        case let n: throw .invalid("\(path): \(element) needs mac= because domain has \(n) interfaces")
        }
    }

    /// First that answers: `guest=`, the network's DHCP reservation, a DHCP lease; else pending.
    /// An answer of the wrong family (when `address=` fixes it) does not count.
    static func resolveGuest(_ f: ForwardSpec, nic: Interface,
                             resolver: some GuestAddressResolver) -> (IPAddress?, GuestSource) {
        if let guest = f.guest { return (guest, .attribute) }
        guard let network = nic.sourceNetwork, let mac = nic.mac else { return (nil, .pending) }
        let family = f.address?.family
        let usable: (IPAddress?) -> IPAddress? = { answer in
            guard let answer, family == nil || answer.family == family, unusableReason(answer) == nil else { return nil }
            return answer
        }
        if let ip = usable(resolver.reservation(network: network, mac: mac, family: family)) {
            return (ip, .reservation)
        }
        if let ip = usable(resolver.lease(network: network, mac: mac, family: family)) {
            return (ip, .lease)
        }
        return (nil, .pending)
    }

    // MARK: - Checks

    /// Checks one range on its own: ports 1-65535, end ≥ start, exclude without to, to in bounds.
    static func checkRange(_ r: RangeSpec, path: String) throws(VirtPortError) {
        if r.ports.start == 0 { throw .invalid("\(path): start=\"0\" is not a port (1-65535)") }
        if r.ports.end < r.ports.start {
            throw .invalid("\(path): end=\"\(r.ports.end)\" is before start=\"\(r.ports.start)\"")
        }
        guard let to = r.to else { return }
        if r.exclude { throw .invalid("\(path): an exclude range cannot have to=") }
        if to == 0 { throw .invalid("\(path): to=\"0\" is not a port (1-65535)") }
        let last = Int(to) + r.ports.count - 1
        if last > 65535 {
            throw .invalid("\(path): to=\"\(to)\" with \(r.ports.count) ports runs past port 65535 (guest ports \(to)-\(last))")
        }
    }

    /// Why `ip` can be neither a guest address nor a host listen address (`address=`), whatever
    /// the host has, or nil. Loopback is refused for both: a DNAT of 127.0.0.1:PORT (or ::1) takes
    /// the host's own local connections to a service listening there and hands them to the VM.
    public static func unusableReason(_ ip: IPAddress) -> String? {
        if ip.isUnspecified { return "the unspecified address" }
        if ip.isMulticast { return "a multicast address" }
        if ip.isLoopback { return "a loopback address" }
        if ip.family == .ipv4 && ip.bytes == [255, 255, 255, 255] { return "the broadcast address" }
        if ip.isUnspecifiedLike { return ip.family == .ipv4 ? "in 0.0.0.0/8 (this network)" : "an IPv4-compatible address (::/96)" }
        if ip.isIPv4Mapped { return "an IPv4-mapped IPv6 address (write the IPv4 address)" }
        return nil
    }

    static func checkAddressPolicy(_ f: ForwardSpec, path: String, policy: Policy) throws(VirtPortError) {
        guard let address = f.address else {
            if !policy.allowAnyAddress {
                throw .invalid("\(path): address= is required: forwarding on every host address is not allowed (\(policy.setting(.listenAddresses)) has no \"any\")")
            }
            return
        }
        if let allowed = policy.listenAddresses, !allowed.contains(address) {
            throw .invalid("\(path): address=\"\(address)\" is not an allowed listen address (\(policy.setting(.listenAddresses)))")
        }
    }

    /// The first port of `range` not inside any of `allowed`, or nil.
    static func firstPortOutside(_ range: PortRange, _ allowed: [PortRange]) -> UInt16? {
        var port = Int(range.start)
        while port <= Int(range.end) {
            guard let covering = allowed.first(where: { $0.contains(UInt16(port)) }) else { return UInt16(port) }
            port = Int(covering.end) + 1
        }
        return nil
    }

    /// Two host runs collide when the kernel could see one packet match both: same protocol,
    /// overlapping ports, and address, device and family each equal or unrestricted on one side.
    ///
    /// A sweep over the runs sorted by protocol and first port (O(n log n) plus the pairs whose
    /// ports overlap), so a domain with thousands of ranges plans in milliseconds. Reports the
    /// pair whose later run comes first in the document, as a reader scanning it would find it.
    static func checkOverlaps(_ segments: [Segment]) throws(VirtPortError) {
        let order = segments.indices.sorted {
            let a = segments[$0].mapping, b = segments[$1].mapping
            return (a.proto, a.hostPorts.start, $0) < (b.proto, b.hostPorts.start, $1)
        }
        var first: (later: Int, earlier: Int)?
        for (k, i) in order.enumerated() {
            let a = segments[i].mapping
            for j in order[(k + 1)...] {
                let b = segments[j].mapping
                if b.proto != a.proto || b.hostPorts.start > a.hostPorts.end { break }
                guard collide(a, b) else { continue }
                let pair = (later: max(i, j), earlier: min(i, j))
                if first.map({ (pair.later, pair.earlier) < ($0.later, $0.earlier) }) ?? true { first = pair }
            }
        }
        guard let (b, e) = first else { return }
        let later = segments[b], earlier = segments[e]
        let m = later.mapping
        let lo = max(earlier.mapping.hostPorts.start, m.hostPorts.start)
        let hi = min(earlier.mapping.hostPorts.end, m.hostPorts.end)
        let what = lo == hi ? "host port \(lo)" : "host ports \(lo)-\(hi)"
        let clause = lo == hi ? "is" : "are"
        throw .invalid("\(later.path): \(m.proto.rawValue) \(what) \(clause) already forwarded by \(earlier.path)")
    }

    static func collide(_ a: Mapping, _ b: Mapping) -> Bool {
        guard a.proto == b.proto, a.hostPorts.overlaps(b.hostPorts) else { return false }
        if let x = a.hostAddress, let y = b.hostAddress, x != y { return false }
        if let x = a.dev, let y = b.dev, x != y { return false }
        if let x = a.family, let y = b.family, x != y { return false }
        return true
    }

    // MARK: - Output

    /// Joins runs of one portForward that continue each other on both host and guest side
    /// (`8000-8004` and `8005-8010`, say), so a mapping is always a maximal contiguous run.
    static func merged(_ segments: [Segment]) -> [Mapping] {
        var out: [(forward: Int, mapping: Mapping)] = []
        let ordered = segments.sorted { ($0.forward, $0.mapping.hostPorts) < ($1.forward, $1.mapping.hostPorts) }
        for s in ordered {
            if let last = out.last, last.forward == s.forward,
               Int(last.mapping.hostPorts.end) + 1 == Int(s.mapping.hostPorts.start),
               Int(last.mapping.guestPorts.end) + 1 == Int(s.mapping.guestPortStart) {
                out[out.count - 1].mapping.hostPorts.end = s.mapping.hostPorts.end
            } else {
                out.append((s.forward, s.mapping))
            }
        }
        return out.map(\.mapping)
    }

    /// Deterministic order: protocol, host port, address (any first), device (any first), guest.
    static func mappingOrder(_ a: Mapping, _ b: Mapping) -> Bool {
        if a.proto != b.proto { return a.proto < b.proto }
        if a.hostPorts != b.hostPorts { return a.hostPorts < b.hostPorts }
        if a.hostAddress != b.hostAddress {
            guard let x = a.hostAddress else { return true }
            guard let y = b.hostAddress else { return false }
            return x < y
        }
        if a.dev != b.dev { return (a.dev ?? "") < (b.dev ?? "") }
        if a.guestAddress != b.guestAddress {
            guard let x = a.guestAddress else { return true }
            guard let y = b.guestAddress else { return false }
            return x < y
        }
        return (a.mac?.description ?? "") < (b.mac?.description ?? "")
    }

    static func name(_ f: Family) -> String { f == .ipv4 ? "IPv4" : "IPv6" }
}
