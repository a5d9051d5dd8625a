#if canImport(Glibc)
import Glibc
#endif
import Libvirt
import Engine
import POSIX
import VirtPortCore

/// `virtport plan [--network-xml FILE]… [--inactive] [VM | < domain.xml]`: the plan as JSON;
/// touches nothing. With VM, the XML comes from libvirt (live when running, else the definition);
/// else from stdin. A domain XML without `<uuid>` is planned (the hook requires one).
/// Each forward's `refused` (and the top-level `refused`) is qemu `prepare`'s own check run now:
/// the line the hook would refuse the next start with, so the Cockpit page shows "refused".
enum PlanCommand {
    static func run(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let networkFiles = try args.options("--network-xml")
        let inactive = args.flag("--inactive")
        let vm = args.rest.first.flatMap { $0.hasPrefix("-") ? nil : $0 }
        if vm != nil { _ = args.next() }
        try args.finish("plan")
        let config = try Config.load()
        var networks: [NetworkDefinition] = []
        for f in networkFiles {
            guard let bytes = try IO.readFile(f) else { throw .invalid("--network-xml \(f): no such file") }
            do { networks.append(try NetworkXML.parse(bytes)) } catch { throw .invalid("--network-xml \(f): \(error.message)") }
        }
        let input: [UInt8]
        if let vm {
            input = try domainXML(vm, inactive: inactive, config: config)
        } else {
            guard !inactive else { throw .invalid("plan: --inactive needs a domain name (plan VM --inactive)") }
            guard isatty(0) == 0 else {
                throw .invalid("plan: no domain: give its name (virtport plan VM) or its XML on stdin (virtport plan < domain.xml)")
            }
            input = try IO.readStdin(limit: HookInput.limit)
        }
        let domain = try DomainXML.parse(input, requireUUID: false)
        let resolver = LibvirtFiles(config: config, overrides: networks)
        let plan = try Planner.plan(domain: domain, resolver: resolver, policy: config.policy)
        // What prepare would say now (read-only): `refused` per forward and for the whole start.
        let diagnostics = StandardErrorDiagnostics()
        // A journal this user cannot even see (root's 0700 directory) would look absent: say so.
        if access(config.databasePath, F_OK) != 0 && errno == EACCES {
            diagnostics.emit("plan \(plan.domainName): refusal check without the journal: "
                + "\(config.databasePath): permission denied (run as root)")
        }
        let refusals = DomainSync.refusals(plan, resources: .perProcess(config), diagnostics: diagnostics)
        Output.out(json(plan, refusals).serialized(pretty: true))
        return 0
    }

    /// The plan's JSON with `refused` added: to each forward (prepare's reason for refusing it, or
    /// null) and to the top (the hook's line refusing the start, or null). Fields are only added.
    static func json(_ plan: Plan, _ refusals: Refusals) -> JSONValue {
        guard case .object(var top) = plan.json else { return plan.json }
        for (i, member) in top.enumerated() where member.0 == "forwards" {
            top[i].1 = .array(plan.mappings.enumerated().map { k, m in
                guard case .object(var fields) = m.json else { return m.json }
                for kind in KindListings.all { fields += kind.planFields(plan, m) }
                fields.append(("refused", .optional(k < refusals.perMapping.count ? refusals.perMapping[k] : nil)))
                return .object(fields)
            })
        }
        top.append(("refused", .optional(refusals.line)))
        return .object(top)
    }

    /// The domain's XML from libvirt (`libvirt_uri`, read-only), as `virsh dumpxml [--inactive]`.
    static func domainXML(_ name: String, inactive: Bool, config: Config) throws(VirtPortError) -> [UInt8] {
        guard !config.libvirtURI.isEmpty else {
            throw .invalid("plan \(name): libvirt_uri is \"\" in \(config.sourcePath), so virtport does not ask libvirt; "
                + "pipe the XML instead: virsh dumpxml \(name) | virtport plan")
        }
        guard let client = LibvirtClient.connect(uri: config.libvirtURI) else {
            throw .operational("plan \(name): \(LibvirtClient.lastFailure)")
        }
        return try client.domainXML(name: name, inactive: inactive).xml
    }
}
