import Engine
import POSIX
import VirtPortCore

/// `virtport plan [--network-xml FILE]… < domain.xml`: the plan as JSON; touches nothing.
enum PlanCommand {
    static func run(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let networkFiles = try args.options("--network-xml")
        try args.finish("plan")
        let config = try Config.load()
        var networks: [NetworkDefinition] = []
        for f in networkFiles {
            guard let bytes = try IO.readFile(f) else { throw .invalid("--network-xml \(f): no such file") }
            do { networks.append(try NetworkXML.parse(bytes)) } catch { throw .invalid("--network-xml \(f): \(error.message)") }
        }
        let input = try IO.readStdin(limit: HookInput.limit)
        let domain = try DomainXML.parse(input)
        let resolver = LibvirtFiles(config: config, overrides: networks)
        let plan = try Planner.plan(domain: domain, resolver: resolver, policy: config.policy)
        Output.out(plan.json.serialized(pretty: true))
        return 0
    }
}
