/// Checks of `address=` and `guest=` against what the host has: its own addresses, the libvirt
/// network a NIC is on (subnets, reservations, leases) and the policy's `guest_networks`.
///
/// Whoever may edit a domain's definition is not trusted with the host's network: `address=`
/// may only name one of the host's own addresses (else the DNAT takes connections the host or
/// other guests make to a remote server), and `guest=` may only name an address the VM can own
/// on its own network (else the host forwards from outside to the gateway, another VM or any
/// address it can route to).
public enum HostChecks {
    /// `address=` must be one of the host's addresses now (the kernel rule also requires
    /// `fib daddr type local`, so an address removed later stops matching instead of hijacking).
    static func checkLocal(_ address: IPAddress, path: String,
                           resolver: some GuestAddressResolver) throws(VirtPortError) {
        guard let local = resolver.localAddresses() else {
            throw .invalid("\(path): address=\"\(address)\" cannot be checked: the host's addresses could not be read")
        }
        if !local.contains(address) {
            throw .invalid("\(path): address=\"\(address)\" is not an address of this host (a forward may only listen on the host's own addresses)")
        }
    }

    /// `guest=` must lie inside the subnet of the NIC's libvirt network, not be the network's own
    /// (gateway), network or broadcast address, nor reserved or leased there to another MAC. A NIC
    /// that is not on a libvirt network with addresses is checked against `[policy]
    /// guest_networks`, and refused when that is empty. Never one of the host's own addresses.
    static func checkGuest(_ guest: IPAddress, nic: Interface, path: String, resolver: some GuestAddressResolver,
                           policy: Policy) throws(VirtPortError) {
        let attr = "\(path): guest=\"\(guest)\""
        try checkGuestPlace(guest, nic: nic, attr: attr, resolver: resolver, policy: policy)
        if let local = resolver.localAddresses(), local.contains(guest) {
            throw .invalid("\(attr) is an address of this host, not a guest address")
        }
    }

    /// The network (or allow-list) part of `checkGuest`.
    static func checkGuestPlace(_ guest: IPAddress, nic: Interface, attr: String, resolver: some GuestAddressResolver,
                                policy: Policy) throws(VirtPortError) {
        if let name = nic.sourceNetwork {
            guard let network = resolver.network(named: name) else {
                throw .invalid("\(attr) cannot be checked: libvirt network '\(Quoted.message(name))' of the interface is not defined")
            }
            if !network.ips.isEmpty {
                try checkInNetwork(guest, network: network, nic: nic, attr: attr, resolver: resolver)
                return
            }
        }
        // A plain bridge, macvtap, a libvirt network without addresses: the host does not know
        // the guest's subnet, the administrator says which ones are allowed.
        let place = nic.sourceNetwork.map { "libvirt network '\(Quoted.message($0))' (which has no <ip>)" }
            ?? nic.sourceBridge.map { "bridge \(Quoted.message($0)) (no libvirt network)" }
            ?? "an interface of type '\(Quoted.message(nic.type))'"
        guard let prefix = policy.guestNetworks.first(where: { $0.contains(guest) }) else {
            let allowed = policy.guestNetworks.isEmpty ? "none configured"
                : policy.guestNetworks.map(\.description).joined(separator: ", ")
            throw .invalid("\(attr) is not in [policy] guest_networks (\(allowed)), which decides for a NIC on \(place)")
        }
        if let why = edgeReason(guest, of: prefix) { throw .invalid("\(attr) is \(why) of \(prefix) (policy guest_networks)") }
    }

    static func checkInNetwork(_ guest: IPAddress, network: NetworkDefinition, nic: Interface, attr: String,
                               resolver: some GuestAddressResolver) throws(VirtPortError) {
        let label = "network '\(Quoted.message(network.name))'"
        guard let ip = network.ips.first(where: { $0.subnet.contains(guest) }) else {
            let subnets = network.ips.map(\.subnet.description).joined(separator: ", ")
            throw .invalid("\(attr) is outside \(label) (\(subnets)) of the interface")
        }
        if guest == ip.address {
            throw .invalid("\(attr) is the host's own address on \(label) (its gateway), not a guest address")
        }
        if let why = edgeReason(guest, of: ip.subnet) { throw .invalid("\(attr) is \(why) of \(label) (\(ip.subnet))") }
        if let host = network.ips.flatMap(\.hosts).first(where: { $0.ip == guest && $0.mac != nic.mac }) {
            throw .invalid("\(attr) is reserved in \(label) for another interface (mac \(host.mac))")
        }
        if let other = resolver.leaseHolders(network: network.name, address: guest).first(where: { $0 != nic.mac }) {
            throw .invalid("\(attr) is leased in \(label) to another interface (mac \(other))")
        }
    }

    /// "the network address" / "the broadcast address" when `ip` is one of those of `prefix`.
    public static func edgeReason(_ ip: IPAddress, of prefix: IPPrefix) -> String? {
        let bits = ip.bytes.count * 8
        // /31 and /32 (IPv4), /127 and /128 (IPv6) have no network or broadcast address.
        guard prefix.prefix < bits - 1 else { return nil }
        if ip == prefix.network { return ip.family == .ipv4 ? "the network address" : "the subnet-router anycast address" }
        if ip.family == .ipv4 {
            var last = prefix.network.bytes
            for i in last.indices {
                let hostBits = min(max(bits - prefix.prefix - (3 - i) * 8, 0), 8)
                last[i] |= UInt8(truncatingIfNeeded: (1 << hostBits) - 1)
            }
            if ip.bytes == last { return "the broadcast address" }
        }
        return nil
    }
}
