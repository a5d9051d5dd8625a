/// Turns `<vp:guard>` elements and the `[guard]` policy into one `GuardPlan` per guarded NIC.
/// Pure, like `Planner`: addresses it does not find in the XML come through the resolver.
enum GuardPlanner {
    /// The guards of `domain`, in interface order.
    /// - Throws: `.invalid`, one line naming `guard[N]` and the attribute, or the policy key a
    ///   guard would weaken.
    static func plan(domain: Domain, resolver: some GuestAddressResolver,
                     policy: Policy) throws(VirtPortError) -> [GuardPlan] {
        let specs = domain.metadata?.guards ?? []
        var byNIC: [Int: (spec: GuardSpec, path: String)] = [:]
        for (i, spec) in specs.enumerated() {
            let path = "guard[\(i + 1)]"
            let nic = try Planner.interface(for: spec.mac, path: path, element: "guard", domain: domain)
            let index = domain.interfaces.firstIndex(of: nic)!
            if let first = byNIC[index] {
                throw .invalid("\(path): a second guard for the interface of \(first.path)")
            }
            byNIC[index] = (spec, path)
        }
        var out: [GuardPlan] = []
        for (index, nic) in domain.interfaces.enumerated() {
            let required = requiredBy(nic, policy: policy)
            guard byNIC[index] != nil || required != nil else { continue }
            let (spec, path) = byNIC[index] ?? (GuardSpec(mac: nic.mac), "interface \(nic.mac?.description ?? "#\(index + 1)")")
            out.append(try planOne(spec, path: path, nic: nic, domain: domain, required: required,
                                   resolver: resolver, policy: policy))
        }
        return out
    }

    /// The `[guard]` setting that makes `nic`'s port guarded, or nil.
    static func requiredBy(_ nic: Interface, policy: Policy) -> String? {
        if let bridge = nic.sourceBridge, policy.guardBridges.contains(bridge) { return policy.setting(.guardBridges) }
        if let network = nic.sourceNetwork, policy.guardNetworks.contains(network) { return policy.setting(.guardNetworks) }
        return nil
    }

    static func planOne(_ spec: GuardSpec, path: String, nic: Interface, domain: Domain, required: String?,
                        resolver: some GuestAddressResolver, policy: Policy) throws(VirtPortError) -> GuardPlan {
        guard nic.type == "network" || nic.type == "bridge" else {
            throw .invalid("\(path): the interface is of type '\(Quoted.message(nic.type))', not a bridge port (type network or bridge)")
        }
        guard let mac = nic.mac else {
            throw .invalid("\(path): the interface has no <mac address> to guard")
        }
        let dhcpServer = spec.dhcpServer ?? !spec.spoofing
        let routerAdvert = spec.routerAdvert ?? !spec.spoofing
        if let required {
            let weakened = !spec.spoofing ? "spoofing=\"off\"" : dhcpServer ? "dhcpServer=\"allow\""
                : routerAdvert ? "routerAdvert=\"allow\"" : nil
            if let weakened {
                throw .invalid("\(path): \(weakened) weakens a guard the policy requires for this port (\(required))")
            }
        }
        var addresses: [GuardAddress] = []
        if !spec.addresses.isEmpty {
            for ip in spec.addresses {
                try checkAddress(ip, nic: nic, attr: "\(path): ip=\"\(ip)\"", resolver: resolver)
                if let bridge = nic.sourceBridge, nic.sourceNetwork == nil, policy.guardBridges.contains(bridge) {
                    try checkOnGuardedBridge(ip, bridge: bridge, mac: mac, attr: "\(path): ip=\"\(ip)\"",
                                             resolver: resolver, policy: policy)
                }
                addresses.append(GuardAddress(address: ip, source: .attribute))
            }
        } else if spec.spoofing {
            addresses = resolve(nic: nic, mac: mac, domain: domain, resolver: resolver)
        }
        return GuardPlan(mac: mac, tap: nic.targetDev, bridge: nic.sourceBridge, network: nic.sourceNetwork,
                         spoofing: spec.spoofing, dhcpServer: dhcpServer, routerAdvert: routerAdvert,
                         isolated: spec.isolated, addresses: addresses, requiredBy: required)
    }

    /// On a plain bridge the policy guards (`[guard] bridges`) the host knows no subnet, but it
    /// knows whose an address is: `ip=` may not name the host's own addresses, the router its
    /// routes through that bridge use, or an address another NIC's forward or guard owns (a
    /// gratuitous ARP for any of them would take their traffic).
    static func checkOnGuardedBridge(_ ip: IPAddress, bridge: String, mac: MACAddress, attr: String,
                                     resolver: some GuestAddressResolver, policy: Policy) throws(VirtPortError) {
        let key = policy.setting(.guardBridges)
        if resolver.localAddresses()?.contains(ip) == true {
            throw .invalid("\(attr) is one of the host's own addresses: not allowed on a bridge the policy guards (\(key))")
        }
        if resolver.gateways(interface: bridge).contains(ip) {
            throw .invalid("\(attr) is the host's router on bridge \(Quoted.message(bridge)): not allowed on a bridge the policy guards (\(key))")
        }
        if let owner = resolver.addressHolder(ip, except: mac) {
            throw .invalid("\(attr) belongs to \(owner): not allowed on a bridge the policy guards (\(key))")
        }
    }

    /// An `ip=` on a libvirt network with addresses must be one the VM can own there (in the
    /// subnet, not the gateway, not reserved or leased to another MAC): else the guard would let
    /// the VM impersonate the gateway or a neighbour. On a plain bridge the host knows no subnet.
    static func checkAddress(_ ip: IPAddress, nic: Interface, attr: String,
                             resolver: some GuestAddressResolver) throws(VirtPortError) {
        guard let name = nic.sourceNetwork, let network = resolver.network(named: name), !network.ips.isEmpty else { return }
        let families = Set(network.ips.map(\.subnet.network.family))
        if !families.contains(ip.family) {
            throw .invalid("\(attr) is \(Planner.name(ip.family)) but network '\(Quoted.message(name))' has no \(Planner.name(ip.family)) subnet")
        }
        try HostChecks.checkInNetwork(ip, network: network, nic: nic, attr: attr, resolver: resolver)
    }

    /// Without `ip=`: `guest=` of the forwards on this NIC, then the network's reservations and
    /// leases of either family; duplicates keep their first source.
    static func resolve(nic: Interface, mac: MACAddress, domain: Domain,
                        resolver: some GuestAddressResolver) -> [GuardAddress] {
        var out: [GuardAddress] = []
        func add(_ ip: IPAddress?, _ source: GuardAddressSource, family: Family? = nil) {
            guard let ip, family == nil || ip.family == family, Planner.unusableReason(ip) == nil, !out.contains(where: { $0.address == ip }) else { return }
            out.append(GuardAddress(address: ip, source: source))
        }
        let single = domain.interfaces.count == 1
        for f in domain.metadata?.forwards ?? [] where f.mac == mac || (f.mac == nil && single) {
            add(f.guest, .forward)
        }
        if let network = nic.sourceNetwork {
            for family in [Family.ipv4, .ipv6] {
                add(resolver.reservation(network: network, mac: mac, family: family), .reservation, family: family)
            }
            for family in [Family.ipv4, .ipv6] {
                add(resolver.lease(network: network, mac: mac, family: family), .lease, family: family)
            }
        }
        return out
    }
}
