public import VirtPortCore

extension DomainSync {
    /// The plan of `domain` as it stands, read-only: no conflict check, no journal, no kernel.
    /// `virtport add`/`remove` compare the plan before and after an edit to say what became of
    /// each forward, and `--wait` plans again until a pending forward has an address.
    public static func plan(_ domain: Domain, resources: Resources, diagnostics: any Diagnostics) throws(VirtPortError) -> Plan {
        let forwarder = Forwarder(resources: resources, diagnostics: diagnostics)
        return try Planner.plan(domain: domain, resolver: forwarder.resolver(), policy: resources.config.policy)
    }
}
