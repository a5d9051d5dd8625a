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

/// What qemu `prepare` would say about a plan now (`virtport plan`'s `refused` fields).
public struct Refusals: Sendable, Equatable {
    /// The line the hook would print refusing the start (`domain 'b' prepare: host port tcp/8080 is
    /// already forwarded to domain 'a' (uuid …)`), nil when the start would pass.
    public var line: String?
    /// Per mapping of the plan, in order: why prepare's check refuses that forward on its own
    /// (the same message, without the hook's prefix), nil when it passes.
    public var perMapping: [String?]
    public init(line: String?, perMapping: [String?]) {
        self.line = line
        self.perMapping = perMapping
    }
}

extension DomainSync {
    /// Runs prepare's own check (`check`: host sockets, then the journal's other domains), read-only,
    /// on the whole plan and on each forward alone, so a refusal names the forward it is about.
    /// Only a refusal counts (invalid input: prepare's exit 2); internal trouble (an unreadable
    /// journal) refuses nothing under the default policy and goes to `diagnostics` instead.
    public static func refusals(_ plan: Plan, resources: Resources, diagnostics: any Diagnostics) -> Refusals {
        let forwarder = Forwarder(resources: resources, diagnostics: diagnostics)
        var trouble: VirtPortError?
        func refusal(_ mappings: [Mapping]) -> VirtPortError? {
            var part = plan
            part.mappings = mappings
            do throws(VirtPortError) {
                try forwarder.checkConflicts(part)
                return nil
            } catch {
                if error.code == .invalidInput { return error }
                trouble = trouble ?? error
                return nil
            }
        }
        let whole = refusal(plan.mappings)
        var each = plan.mappings.map { refusal([$0]).map { "\($0)" } }
        // Refused only together (a port forwarded twice by the plan): each forward gets that reason.
        if let whole, each.allSatisfy({ $0 == nil }) { each = each.map { _ in "\(whole)" } }
        if let trouble { diagnostics.emit("plan \(plan.domainName): refusal check not done: \(trouble)") }
        return Refusals(line: whole.map { QemuWork.line(op: "prepare", domain: plan.domainName, $0) }, perMapping: each)
    }
}
