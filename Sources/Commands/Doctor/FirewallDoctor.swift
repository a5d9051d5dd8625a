#if canImport(Glibc)
import Glibc
#endif
import Engine
import POSIX
import VirtPortCore

/// doctor's firewall checks: which backend carries libvirt's rules, iptables-legacy, firewalld.
enum FirewallDoctor {
    static func findings() -> [Finding] {
        var out: [Finding] = []
        let nft = Spawn.find("nft", in: ["/usr/sbin", "/sbin", "/usr/bin"])
        let tables = nft.flatMap { Spawn.capture([$0, "list", "tables"]) }.map { $0.split(separator: "\n").map { $0.trimmed } } ?? []

        // libvirt's backend, as virtport sees it over nf_tables.
        if tables.contains("table ip libvirt_network") {
            out.append(.ok("firewall backend", "libvirt uses its nftables backend (table ip libvirt_network)"))
        } else if tables.contains("table ip filter"),
                  let chain = nft.flatMap({ Spawn.capture([$0, "list", "chain", "ip", "filter", "LIBVIRT_FWI"]) }), !chain.isEmpty {
            out.append(.ok("firewall backend", "libvirt uses iptables-nft (chain LIBVIRT_FWI in table ip filter)"))
        } else {
            out.append(.ok("firewall backend", "no libvirt NAT network rules in nf_tables (no NAT network active, or see below)"))
        }

        // iptables-legacy.
        let legacy4 = LegacyIptables.tables(.ipv4)
        if let alt = LegacyIptables.alternative, alt.contains("legacy") {
            out.append(.fail("iptables-legacy", "iptables points at \(alt) (update-alternatives)",
                             why: "libvirt writes its NAT network rules with iptables, so they land in x_tables, which virtport cannot see or precede over nf_tables: libvirt's REJECT wins and forwarded connections to guests never arrive",
                             fix: "update-alternatives --set iptables /usr/sbin/iptables-nft && update-alternatives --set ip6tables /usr/sbin/ip6tables-nft && iptables-legacy -F && iptables-legacy -X, then restart libvirtd and run virtport reconcile"))
        } else if !legacy4.isEmpty {
            let libvirtThere = Spawn.find("iptables-legacy-save", in: ["/usr/sbin", "/sbin"])
                .flatMap { Spawn.capture([$0]) }?.contains(":LIBVIRT_FWI") ?? false
            out.append(.fail("iptables-legacy", "legacy iptables tables are loaded (\(legacy4.joined(separator: ", ")))\(libvirtThere ? " and hold libvirt's LIBVIRT_FWI chain" : "")",
                             why: libvirtThere ? "libvirt's REJECT for its NAT networks lives in x_tables, which virtport cannot precede: forwarded connections to guests are rejected"
                                 : "rules in x_tables (another tool's) are evaluated too and are invisible to virtport: a DROP/REJECT there stops forwarded connections",
                             fix: "iptables-legacy-save   (see what is there; move that tool to iptables-nft, then iptables-legacy -F; iptables-legacy -X; restart libvirtd; virtport reconcile)",
                             status: libvirtThere ? "fail" : "warn"))
        } else {
            out.append(.ok("iptables-legacy", "no legacy iptables tables loaded\(LegacyIptables.alternative.map { "; iptables -> \($0)" } ?? "")"))
        }

        // firewalld (nftables backend): its filter_FORWARD must accept DNATed connections, or a
        // policy must accept what is forwarded to the guests' bridges.
        if tables.contains("table inet firewalld") {
            let list = { (chain: String) in nft.flatMap { Spawn.capture([$0, "list", "chain", "inet", "firewalld", chain]) } ?? "" }
            let chain = list("filter_FORWARD")
            let policies = acceptingPolicies(list)
            if chain.contains("ct status dnat accept") {
                out.append(.ok("firewalld", "firewalld's filter_FORWARD accepts DNATed connections (ct status dnat accept)"))
            } else if !policies.isEmpty {
                out.append(.ok("firewalld", "firewalld's filter_FORWARD has no `ct status dnat accept` (StrictForwardPorts=yes); policy "
                               + policies.map { "\($0.policy) accepts forwarded traffic to \($0.bridge)" }.joined(separator: ", ")))
            } else {
                out.append(.fail("firewalld", "firewalld's filter_FORWARD has no `ct status dnat accept` (StrictForwardPorts=yes in firewalld >= 2.3) and no policy accepts forwarded traffic to the guests' bridges",
                                 why: "firewalld then forwards only its own forward-ports: connections virtport DNATs to a guest are rejected by firewalld (reject with icmpx admin-prohibited) before they reach the guest",
                                 fix: "set StrictForwardPorts=no in /etc/firewalld/firewalld.conf and run firewall-cmd --reload; or keep it and accept forwarded traffic into libvirt's zone (libvirt's own rules still admit only virtport's DNATed connections): firewall-cmd --permanent --new-policy virtport && firewall-cmd --permanent --policy virtport --add-ingress-zone ANY && firewall-cmd --permanent --policy virtport --add-egress-zone libvirt && firewall-cmd --permanent --policy virtport --set-target ACCEPT && firewall-cmd --reload"))
            }
        } else if tables.contains("table ip firewalld") || FileSystem.exists("/run/firewalld") && !tables.contains("table inet firewalld") && FileSystem.exists("/run/firewalld/firewalld.pid") {
            out.append(.fail("firewalld", "firewalld runs without its nftables tables (iptables backend?)",
                             why: "with FirewallBackend=iptables its rules are in x_tables and invisible to virtport",
                             fix: "set FirewallBackend=nftables in /etc/firewalld/firewalld.conf; systemctl restart firewalld", status: "warn"))
        } else {
            out.append(.ok("firewalld", "not running"))
        }
        return out
    }

    /// firewalld policies whose forward chain ends in `accept`, with the bridge (oifname) that
    /// filter_FORWARD_POLICIES_pre sends to them: `oifname "virbr0" jump filter_FWD_policy_NAME`.
    static func acceptingPolicies(_ list: (String) -> String) -> [(policy: String, bridge: String)] {
        var found: [(policy: String, bridge: String)] = []
        for line in list("filter_FORWARD_POLICIES_pre").split(separator: "\n").map({ $0.trimmed }) {
            let words = line.split(separator: " ").map(String.init)
            guard words.count == 4, words[0] == "oifname", words[2] == "jump", words[3].hasPrefix("filter_FWD_policy_") else { continue }
            let rules = list(words[3]).split(separator: "\n").map { $0.trimmed }.filter { !$0.isEmpty && $0 != "}" }
            if rules.last == "accept" {
                found.append((String(words[3].dropFirst("filter_FWD_policy_".count)), String(words[1].filter { $0 != "\"" })))
            }
        }
        return found
    }
}
