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
        Output.out(plan.json.serialized(pretty: true))
        return 0
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
