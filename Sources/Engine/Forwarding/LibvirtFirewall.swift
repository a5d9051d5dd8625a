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
    struct Place: Sendable, Equatable {
        /// Which of libvirt's firewall backends owns the chain: the rule is written in its encoding.
        var backend: AcceptRule.Style
        var table: String
        var chain: String
        /// Our rule must come before the first rule that mentions this name.
        var mustPrecede: String

        /// That rule, as people call it.
        var blockerText: String { backend == .nftables ? "libvirt's reject" : "the jump to \(mustPrecede)" }
    }

    let nf: any FirewallDriver
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

    /// What is wrong with the accept rule for one subnet of a network.
    struct Finding: Sendable, Equatable {
        enum Problem: Sendable, Equatable {
            case missing
            /// Ours is rule `ours` (1-based) of the chain, libvirt's blocker rule `blocker`.
            case below(ours: Int, blocker: Int, of: Int)
            case duplicated(Int)
        }

        var bridge: String
        var family: Family
        var subnet: IPPrefix
        var place: Place
        var problem: Problem
        /// Our rules' handles (deleted when the rule is put back in place).
        var handles: [UInt64]

        /// "ip libvirt_network guest_input"
        var chainText: String { "\(family == .ipv4 ? "ip" : "ip6") \(place.table) \(place.chain)" }

        /// What is wrong, as reconcile and doctor say it.
        var text: String {
            switch problem {
            case .missing: "missing from \(chainText)"
            case .below(let ours, let blocker, let count):
                "below \(place.blockerText) in \(chainText) (rule \(ours) of \(count), \(place.blockerText) is rule \(blocker))"
            case .duplicated(let n): "\(n) copies in \(chainText)"
            }
        }

        /// What it does to traffic.
        var consequence: String {
            switch problem {
            case .missing, .below: "new connections to the network's forwards are refused by \(place.blockerText)"
            case .duplicated: "harmless, but only one belongs there"
            }
        }

        /// What was done about it, for the heal's log line.
        var repair: String {
            switch problem {
            case .missing: "put back at the top of \(chainText)"
            case .below: "\(LibvirtFirewall.movedBack) \(place.blockerText) (it was below it in \(chainText))"
            case .duplicated: "duplicates removed from \(chainText)"
            }
        }
    }

    /// The phrase of a heal line that only restored the order (`Healer.isReorder`).
    static let movedBack = "moved back in front of"

    /// Reads, for each subnet of a NAT network in `families`, whether the accept rule is in effect:
    /// present once, before the first rule that mentions `mustPrecede`. Read-only.
    /// - Returns: one finding per subnet where it is not (empty: all in place, or no libvirt reject).
    /// - Parameter noPlace: called for a subnet whose family has no libvirt reject chain.
    func inspect(_ net: NetworkDefinition, families: Set<Family>,
                 noPlace: (String, Family) -> Void = { _, _ in }) throws(VirtPortError) -> [Finding] {
        guard let bridge = net.bridge, (net.forwardMode ?? "") == "nat" else { return [] }
        var out: [Finding] = []
        for ip in net.ips where families.contains(ip.family) {
            guard let place = try place(ip.family) else {
                noPlace(bridge, ip.family)
                continue
            }
            let rules = try rules(ip.family, place)
            let ours = rules.indices.filter { rules[$0].mentions(Self.tag(bridge)) }
            let blocker = rules.firstIndex { !$0.mentions(Self.tag(bridge)) && $0.mentions(place.mustPrecede) }
            let problem: Finding.Problem
            if ours.isEmpty {
                problem = .missing
            } else if let blocker, ours[0] > blocker {
                problem = .below(ours: ours[0] + 1, blocker: blocker + 1, of: rules.count)
            } else if ours.count > 1 {
                problem = .duplicated(ours.count)
            } else {
                continue
            }
            out.append(Finding(bridge: bridge, family: ip.family, subnet: ip.subnet, place: place, problem: problem,
                               handles: ours.map { rules[$0].handle }))
        }
        return out
    }

    /// Makes sure the accept rule is in effect for each subnet of a NAT network: where it is
    /// missing, misplaced or doubled, our rules are deleted and one is inserted at the top, in one
    /// batch (no moment without it).
    /// - Returns: what had to be put right (empty: all was in place).
    @discardableResult
    func ensure(_ net: NetworkDefinition, families: Set<Family>) throws(VirtPortError) -> [Finding] {
        let findings = try inspect(net, families: families) { bridge, family in
            if let line = LegacyIptables.warningIfInUse(bridge: bridge, family: family) { warn(line) }
        }
        for f in findings { try replace(f) }
        return findings
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

    /// Deletes our rules of `f` and inserts one at the top, in one batch over netlink, in the chain
    /// owner's own encoding (`AcceptRule`): no process. A handle gone meanwhile (libvirt rebuilding
    /// under us) aborts the batch: read again and retry once.
    private func replace(_ f: Finding) throws(VirtPortError) {
        let rule = AcceptRule(style: f.place.backend, bridge: f.bridge,
                              subnet: Subnet(address: f.subnet.network, prefix: UInt8(f.subnet.prefix)), tag: Self.tag(f.bridge))
        var handles = f.handles
        for attempt in 0..<2 {
            do {
                try nf.insertAtTop(rule, table: f.place.table, chain: f.place.chain, replacing: handles)
                break
            } catch where attempt == 0 && error.isMissingObject {
                let rules = try rules(f.family, f.place)
                handles = rules.filter { $0.mentions(Self.tag(f.bridge)) }.map(\.handle)
            } catch {
                throw .operational("libvirt firewall: cannot insert virtport's rule into \(f.place.table) \(f.place.chain)",
                                   cause: error)
            }
        }
        if !handles.isEmpty { nf.closeInBackground() }
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

/// Where libvirt's accept rule can live, as nf_tables notifications name things: what the agent
/// (`HealWatcher`) and `install` (`LibvirtReload`) watch for libvirt's rebuilds.
public enum LibvirtChains {
    /// "family table chain" of each chain the accept rule goes into: a rule inserted there may
    /// land above ours.
    public static let acceptRuleChains: Set<String> = [
        "ip libvirt_network guest_input", "ip6 libvirt_network guest_input", "ip filter FORWARD", "ip6 filter FORWARD",
    ]

    /// "family table" of the tables libvirt rebuilds (its nftables backend's, iptables-nft's filter).
    public static let tables: Set<String> = ["ip libvirt_network", "ip6 libvirt_network", "ip filter", "ip6 filter"]

    /// Whether libvirt's firewall for a NAT network is present for either family (its
    /// `guest_input` chain or iptables' `LIBVIRT_FWI`): a rebuild of it is coming after a SIGHUP.
    public static func present(_ nf: any FirewallDriver) -> Bool {
        for family in [Family.ipv4, .ipv6] {
            if (try? nf.chainExists(family: family, table: "libvirt_network", chain: "guest_input")) == true
                || (try? nf.chainExists(family: family, table: "filter", chain: "LIBVIRT_FWI")) == true {
                return true
            }
        }
        return false
    }
}
