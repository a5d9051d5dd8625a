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

        // firewalld (nftables backend): its filter_FORWARD must accept DNATed connections.
        if tables.contains("table inet firewalld") {
            let chain = nft.flatMap { Spawn.capture([$0, "list", "chain", "inet", "firewalld", "filter_FORWARD"]) } ?? ""
            if chain.contains("ct status dnat accept") {
                out.append(.ok("firewalld", "firewalld's filter_FORWARD accepts DNATed connections (ct status dnat accept)"))
            } else {
                out.append(.fail("firewalld", "firewalld's filter_FORWARD has no `ct status dnat accept` (StrictForwardPorts=yes, or a version without it)",
                                 why: "firewalld then forwards only its own forward-ports: connections virtport DNATs to a guest are rejected by firewalld's zone rules (libvirt's zone included)",
                                 fix: "set StrictForwardPorts=no in /etc/firewalld/firewalld.conf and run firewall-cmd --reload   (or a policy: firewall-cmd --permanent --new-policy virtport; --policy virtport --add-ingress-zone ANY --add-egress-zone libvirt --set-target ACCEPT)"))
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
}
