#if canImport(Glibc)
import Glibc
#endif
import POSIX
public import VirtPortCore

/// Hosts where libvirt's firewall rules live in x_tables (`iptables-legacy`): nf_tables netlink
/// cannot see them, so no accept rule can be put before libvirt's REJECT and a forward to a NAT
/// network silently never carries a connection. Detected and said, in the system log and by doctor.
public enum LegacyIptables {
    /// Legacy tables loaded in this network namespace (`/proc/net/ip_tables_names`, per family).
    public static func tables(_ family: Family) -> [String] {
        let file = family == .ipv4 ? "/proc/net/ip_tables_names" : "/proc/net/ip6_tables_names"
        return (HostPaths.readText(file) ?? "").split(separator: "\n").map { $0.trimmed }.filter { !$0.isEmpty }
    }

    /// Where `iptables` points (update-alternatives), if it is a symlink.
    public static var alternative: String? { FileSystem.readLink(HostPaths.path("/etc/alternatives/iptables")) }

    /// Called where libvirt's reject chain was not found in nf_tables for a NAT network: the line
    /// for `warn` (stderr of a hook, the agent's reply, and the system log), or nil.
    public static func warningIfInUse(bridge: String, family: Family) -> String? {
        let names = tables(family)
        guard !names.isEmpty else { return nil }
        return "network on \(bridge): libvirt's firewall is not in nf_tables, and legacy iptables tables are loaded "
            + "(\(names.joined(separator: ", "))): libvirt probably uses iptables-legacy, whose REJECT virtport cannot "
            + "precede; forwarded connections to this network will be rejected (run 'virtport doctor')"
    }
}
