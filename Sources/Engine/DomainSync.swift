public import VirtPortCore

/// One domain brought to what it declares now, outside libvirt's hook calls: the agent's event
/// handling (a lifecycle event, a metadata change, a DHCP lease that appeared or moved) and the
/// live edits of `virtport add`/`remove`. The same plan → journal intent → one batch → applied as a
/// hook's `start` and `stopped` (QemuWork calls these too), so every source of change ends in the
/// same code and the same history.
public enum DomainSync {
    /// Plans `domain` (its live XML: it runs) and makes the journal and the kernel hold exactly
    /// that. A domain whose metadata is gone keeps nothing. Idempotent.
    /// - Returns: the plan that was applied.
    /// - Throws: `.invalid` for metadata that fails validation or the policy, or a conflict
    ///   (nothing changed then); `.operational` for journal or kernel trouble.
    @discardableResult
    public static func apply(_ domain: Domain, reason: String, resources: Resources,
                             diagnostics: any Diagnostics) throws(VirtPortError) -> Plan {
        let files = LibvirtFiles(config: resources.config, overrides: [])
        let plan = try Planner.plan(domain: domain, resolver: files, policy: resources.config.policy)
        try DomainLifecycle.change(plan, uuid: plan.domainUUID, name: plan.domainName, reason: reason, resources: resources,
                                   diagnostics: diagnostics, files: files)
        return plan
    }

    /// What qemu `prepare` checks before a start, read-only: the plan (grammar, policy) and
    /// conflicts with running domains and bound host sockets. `virtport add` checks an edit so.
    @discardableResult
    public static func check(_ domain: Domain, resources: Resources, diagnostics: any Diagnostics) throws(VirtPortError) -> Plan {
        let forwarder = Forwarder(resources: resources, diagnostics: diagnostics)
        let plan = try Planner.plan(domain: domain, resolver: forwarder.resolver(), policy: resources.config.policy)
        try forwarder.checkConflicts(plan)
        return plan
    }

    /// Takes down everything the journal holds for the domain (it stopped). A no-op when it has nothing.
    public static func remove(uuid: String, reason: String, resources: Resources,
                              diagnostics: any Diagnostics) throws(VirtPortError) {
        try DomainLifecycle.change(nil, uuid: uuid, name: "", reason: reason, resources: resources, diagnostics: diagnostics)
    }
}
