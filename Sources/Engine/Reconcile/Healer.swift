public import VirtPortCore

/// The agent's self-heal (README "Self-heal"): after nf_tables said that something was deleted,
/// puts back what the journal has in the kernel and someone else took away — virtport's table,
/// its chains and rules, map elements, hairpin subnets, libvirt's accept rule, and `table bridge`'s
/// port guards (their isolated flags are not nf_tables and are not watched) — under the
/// exclusive change lock (so a hook mid-change is waited for, never raced). Kernel only: the
/// journal is the truth here, running domains are not consulted (that is reconcile's business).
/// Nothing is deleted: an element nobody owns is reconcile's to judge.
public enum Healer {
    /// Whether a line `heal` returned only restored the order of libvirt's chain (libvirt
    /// re-inserted its rules above ours): routine after each libvirt reload, not another tool
    /// fighting virtport, so the agent's back-off counts these apart.
    public static func isReorder(_ line: String) -> Bool {
        line.hasPrefix("libvirt's accept rule for network ") && line.contains(LibvirtFirewall.movedBack)
            && !line.contains("put back at the top") && !line.contains("duplicates removed")
    }

    /// Only libvirt's accept rule, for each network the journal has forwards on in the kernel:
    /// missing, doubled or below libvirt's reject → put back in front (the agent's check at start).
    /// - Returns: one line per network put right.
    public static func healAcceptRules(resources: Resources, diagnostics: any Diagnostics) throws(VirtPortError) -> [String] {
        guard let db = try resources.existingJournal(readOnly: false) else { return [] }
        let config = resources.config
        return try resources.changeLock().withExclusive { () throws(VirtPortError) -> [String] in
            let files = LibvirtFiles(config: config, overrides: [])
            let needs = NetworkNeeds.of(try db.activeMappings().filter(\.isInKernel).map(\.mapping), resolver: files)
            let warn = Warnings(diagnostics: diagnostics, log: EventLog(config: config)).emit
            return try NetworkSync(nf: try resources.kernel(), resolver: files, warn: warn).syncFirewall(needs)
        }
    }

    /// - Returns: one line per thing put back (empty: all was in place).
    public static func heal(resources: Resources, diagnostics: any Diagnostics) throws(VirtPortError) -> [String] {
        try DomainLifecycle.heal(resources: resources, diagnostics: diagnostics)
    }
}
