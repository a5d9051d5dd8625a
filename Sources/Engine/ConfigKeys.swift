/// Every key of virtport.conf, in its one documented spelling: the source of the template that
/// `virtport install` writes, of virtport.conf(5) and of the README table. `Config.parse` reads
/// exactly these (ConfigTests checks that each one parses with its default, and that the template
/// does).
public enum ConfigKeys {
    public struct Key: Sendable {
        /// "" for top level, else the section without brackets.
        public var section: String
        public var name: String
        /// The default as a TOML value.
        public var defaultValue: String
        public var meaning: String

        public init(section: String, name: String, defaultValue: String, meaning: String) {
            self.section = section
            self.name = name
            self.defaultValue = defaultValue
            self.meaning = meaning
        }

        /// `policy.require_source_ports`; a top-level key as is.
        public var dotted: String { section.isEmpty ? name : section + "." + name }
    }

    public static let sections: [(name: String, about: String)] = [
        ("", "Keys before any section: where virtport keeps its state, and which libvirt it asks."),
        ("paths", "Where libvirt keeps its files, and where the agent listens."),
        ("policy", "Root-owned limits on what a domain's metadata may claim: anyone who can edit a domain's XML must not grab host port 22."),
        ("guard", "Bridge ports guarded whatever the domain says: spoofing on, DHCP server replies and router advertisements blocked; a <vp:guard> there may add ip= or isolated=, never weaken it."),
        ("history", "The journal's history table."),
        ("agent", "What `virtport agent` writes besides the system log."),
        ("log", "Where every decision (applied, removed, pending, completed, refused, healed, warning) is logged."),
    ]

    /// The core's keys, then each rule kind's (`RuleKind.configKeys`) after the key it names.
    public static let keys: [Key] = {
        var out = coreKeys
        for k in kindKeys {
            let at = out.firstIndex { $0.section == k.key.section && $0.name == k.after }.map { $0 + 1 }
                ?? (out.lastIndex { $0.section == k.key.section }.map { $0 + 1 } ?? out.count)
            out.insert(k.key, at: at)
        }
        return out
    }()

    /// The keys the rule kinds declare.
    public static let kindKeys: [KindConfigKey] = RuleKinds.all.flatMap(\.configKeys)

    static let coreKeys: [Key] = [
        Key(section: "", name: "database", defaultValue: "\"/var/lib/virtport/virtport.db\"",
            meaning: "the SQLite journal (mode 0600; its directory is created 0700)"),
        Key(section: "", name: "table", defaultValue: "\"virtport\"",
            meaning: "name of the inet table virtport owns (letters, digits, _ and -)"),
        Key(section: "", name: "libvirt_uri", defaultValue: "\"qemu:///system\"",
            meaning: "where reconcile and `plan VM` ask libvirt (read-only); \"\" never connects: reconcile then reads libvirt's status files"),
        Key(section: "paths", name: "libvirt_run_dir", defaultValue: "\"/run/libvirt\"",
            meaning: "libvirt's runtime state: live network XML, domain status files"),
        Key(section: "paths", name: "libvirt_config_dir", defaultValue: "\"/etc/libvirt\"",
            meaning: "libvirt's configuration: network definitions under qemu/networks/"),
        Key(section: "paths", name: "libvirt_state_dir", defaultValue: "\"/var/lib/libvirt\"",
            meaning: "libvirt's state: dnsmasq lease status files under dnsmasq/"),
        Key(section: "paths", name: "hooks_dir", defaultValue: "\"/etc/libvirt/hooks\"",
            meaning: "where `virtport install` puts the hooks"),
        Key(section: "paths", name: "agent_socket", defaultValue: "\"/run/virtport/agent.sock\"",
            meaning: "where `virtport agent` listens and the hooks look for it"),
        Key(section: "policy", name: "host_ports", defaultValue: "[\"1024-65535\"]",
            meaning: "host ports metadata may forward (ports and ranges); a port below 1024 needs an explicit entry"),
        Key(section: "policy", name: "listen_addresses", defaultValue: "[\"any\"]",
            meaning: "host addresses address= may name; without \"any\" every forward must name one of them"),
        Key(section: "policy", name: "guest_networks", defaultValue: "[]",
            meaning: "prefixes guest= may point into for a NIC that is not on a libvirt network with addresses (a plain bridge, macvtap); empty: refused"),
        Key(section: "policy", name: "max_forwards_per_domain", defaultValue: "64",
            meaning: "mappings (merged port ranges) one domain may have"),
        Key(section: "policy", name: "max_ports_per_domain", defaultValue: "4096",
            meaning: "host ports one domain may have in total"),
        Key(section: "policy", name: "on_internal_error", defaultValue: "\"warn\"",
            meaning: "a journal or kernel failure inside a hook: \"warn\" lets the VM start, \"refuse\" stops it"),
        Key(section: "guard", name: "bridges", defaultValue: "[]",
            meaning: "bridges (br0, virbr0) every VM port on which is guarded"),
        Key(section: "guard", name: "networks", defaultValue: "[]",
            meaning: "libvirt networks every VM port on which is guarded"),
        Key(section: "history", name: "retention_days", defaultValue: "0",
            meaning: "history older than this many days is pruned by reconcile; 0 keeps everything"),
        Key(section: "log", name: "syslog_socket", defaultValue: "\"/dev/log\"",
            meaning: "the syslog socket every hook, the agent and the commands log their decisions to, one line each (journald: journalctl -t virtport); \"\" logs nothing"),
        Key(section: "agent", name: "metrics_file", defaultValue: "\"\"",
            meaning: "Prometheus textfile the agent rewrites (forwards by state, hook and event latency, heals, refusals), e.g. /var/lib/prometheus/node-exporter/virtport.prom; \"\" writes none"),
    ]

    /// Spellings older versions accepted: still read, with a warning naming the documented one.
    public static let deprecated: [(old: String, new: String)] = [
        ("agent_socket", "[paths] agent_socket"),
        ("paths.database", "database (top level)"),
        ("paths.libvirt_uri", "libvirt_uri (top level)"),
    ]

    /// `[policy] host_ports`, or `database` for a top-level key.
    public static func display(_ dotted: String) -> String {
        guard let dot = dotted.firstIndex(of: ".") else { return dotted }
        return "[\(dotted[..<dot])] \(dotted[dotted.index(after: dot)...])"
    }
}
