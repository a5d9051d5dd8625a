import Netfilter
import VirtPortCore

/// libvirt rejects new inbound connections to its NAT networks. This keeps one small, tagged rule
/// that accepts only connections a DNAT translated, to that network's subnet and bridge, in front
/// of libvirt's reject:
///
/// - iptables backend (libvirt < 10.4; `ip filter` has chain `LIBVIRT_FWI`): at the top of the
///   built-in `FORWARD` chain, before the jump to `LIBVIRT_FWI`:
///   `iptables -I FORWARD 1 -d SUBNET -o BRIDGE -m conntrack --ctstate DNAT -m comment --comment virtport:BRIDGE -j ACCEPT`.
///   Not inside `LIBVIRT_FWI`: libvirt 9.0 deletes and re-inserts its rules at the top of that
///   chain on every SIGHUP or daemon restart, with no hook call, which would leave ours below
///   the REJECT; FORWARD's order survives all of that (measured). Written over netlink byte for
///   byte as iptables-nft writes it (`AcceptRule`), so the table stays readable by iptables
///   (libvirt's own later calls) and `iptables -C` with that spec matches it.
/// - nftables backend (libvirt >= 10.4; table `ip libvirt_network`): at the top of its chain
///   `guest_input`: `oifname BRIDGE ip daddr SUBNET ct status dnat counter accept comment "virtport:BRIDGE"`.
///
/// Presence and position are read over netlink (a chain dump, no process): the rule must come
/// before the first rule that rejects (nftables) or jumps to `LIBVIRT_FWI` (iptables); otherwise
/// it is deleted and inserted again at the top. No process runs: inserts and deletes (by handle) go
/// over the hook's netlink socket. The rule is removed once no applied forward on that network
/// remains.
struct LibvirtFirewall {
    struct Place {
        /// Which of libvirt's firewall backends owns the chain: the rule is written in its encoding.
        var backend: AcceptRule.Style
        var table: String
        var chain: String
        /// Our rule must come before the first rule that mentions this name.
        var mustPrecede: String
    }

    let nf: NetfilterSession
    /// Where a warning goes (the operation's diagnostics and the system log: `Warnings`).
    var warn: (String) -> Void = { _ in }

    static func tag(_ bridge: String) -> String { "virtport:\(bridge)" }

    /// Where the rule goes for `family`, whichever libvirt backend is live; nil: no libvirt reject.
    func place(_ family: Family) throws(VirtPortError) -> Place? {
        if try exists(family, "libvirt_network", "guest_input") {
            return Place(backend: .nftables, table: "libvirt_network", chain: "guest_input", mustPrecede: "reject")
        }
        if try exists(family, "filter", "LIBVIRT_FWI") {
            return Place(backend: .iptables, table: "filter", chain: "FORWARD", mustPrecede: "LIBVIRT_FWI")
        }
        return nil
    }

    private func exists(_ family: Family, _ table: String, _ chain: String) throws(VirtPortError) -> Bool {
        do { return try nf.chainExists(family: family, table: table, chain: chain) } catch {
            throw .operational("libvirt firewall: cannot read chain \(table) \(chain)", cause: error)
        }
    }

    /// The rules of the chain at `place` (none when the chain vanished since `place` found it).
    private func rules(_ family: Family, _ place: Place) throws(VirtPortError) -> [ForeignRule] {
        do { return try nf.listRules(family: family, table: place.table, chain: place.chain) ?? [] } catch {
            throw .operational("libvirt firewall: cannot list \(place.table) \(place.chain)", cause: error)
        }
    }

    /// Makes sure the accept rule is in effect for each subnet of a NAT network.
    /// - Returns: whether a rule had to be (re)placed.
    @discardableResult
    func ensure(_ net: NetworkDefinition, families: Set<Family>) throws(VirtPortError) -> Bool {
        guard let bridge = net.bridge, (net.forwardMode ?? "") == "nat" else { return false }
        var placed = false
        for ip in net.ips where families.contains(ip.family) {
            guard let place = try place(ip.family) else {
                if let line = LegacyIptables.warningIfInUse(bridge: bridge, family: ip.family) { warn(line) }
                continue
            }
            let rules = try rules(ip.family, place)
            let ours = rules.indices.filter { rules[$0].mentions(Self.tag(bridge)) }
            let blocker = rules.firstIndex { $0.mentions(place.mustPrecede) }
            if ours.count == 1, blocker.map({ ours[0] < $0 }) ?? true { continue }
            try delete(ip.family, place, handles: ours.map { rules[$0].handle })
            try insert(place, bridge: bridge, subnet: ip.subnet)
            placed = true
        }
        return placed
    }

    /// Removes our rules for this network (no forward needs them any more).
    func remove(_ net: NetworkDefinition) throws(VirtPortError) {
        guard let bridge = net.bridge else { return }
        for family in [Family.ipv4, .ipv6] {
            guard let place = try place(family) else { continue }
            let rules = try rules(family, place)
            let ours = rules.filter { $0.mentions(Self.tag(bridge)) }.map(\.handle)
            try delete(family, place, handles: ours)
        }
    }

    /// Inserts over netlink, in the chain owner's own encoding (`AcceptRule`): no process.
    private func insert(_ place: Place, bridge: String, subnet: IPPrefix) throws(VirtPortError) {
        let rule = AcceptRule(style: place.backend, bridge: bridge,
                              subnet: Subnet(address: subnet.network, prefix: UInt8(subnet.prefix)), tag: Self.tag(bridge))
        do {
            try nf.insertAtTop(rule, table: place.table, chain: place.chain)
        } catch {
            throw .operational("libvirt firewall: cannot insert virtport's rule into \(place.table) \(place.chain)",
                               cause: error)
        }
    }

    /// Deletes by handle over netlink, for both backends (iptables-nft keeps its rules in nf_tables,
    /// so the table stays iptables-readable): no process, and the socket's slow release after a
    /// delete is left to a child (`closeInBackground`).
    private func delete(_ family: Family, _ place: Place, handles: [UInt64]) throws(VirtPortError) {
        if handles.isEmpty { return }
        do {
            try nf.deleteRules(family: family, table: place.table, chain: place.chain, handles: handles)
        } catch {
            throw .operational("libvirt firewall: cannot delete virtport's rule from \(place.table) \(place.chain)",
                               cause: error)
        }
        nf.closeInBackground()
    }
}
