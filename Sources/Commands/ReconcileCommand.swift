#if canImport(Glibc)
import Glibc
#endif
import Agent
import Engine
import POSIX
import VirtPortCore

/// `virtport reconcile [--dry-run] [--json]`.
enum ReconcileCommand {
    static func run(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let dryRun = args.flag("--dry-run")
        let json = args.flag("--json")
        try args.finish("reconcile")
        // Without CAP_NET_ADMIN the kernel's table cannot even be read: a "nothing to do" would be a lie.
        guard geteuid() == 0 else {
            throw .operational("reconcile reads and changes nftables and the journal (run as root)")
        }
        let config = try Config.load()
        let running = RunningDomains.list(config: config).entries
        let fixes = try Reconciler(resources: .perProcess(config), running: running).run(dryRun: dryRun, reason: "reconcile")
        let traces = TraceDoctor.removeLeftovers(config: config, dryRun: dryRun)
        for line in traces where !json { Output.out(line) }
        if json {
            Output.out(JSONValue.object([
                ("dry_run", .bool(dryRun)),
                ("fixes", .array(fixes.map { f in
                    .object([("action", .string(f.action.rawValue)), ("domain", .optional(f.domain)),
                             ("what", .string(f.what)), ("reason", .string(f.reason))])
                })),
            ]).serialized(pretty: true))
        } else if fixes.isEmpty && traces.isEmpty {
            Output.out("nothing to do: kernel, journal and running domains agree")
        } else {
            let verb = dryRun ? "would " : ""
            for f in fixes { Output.out("\(verb)\(f.action.rawValue) \(f.domain.map { "[\($0)] " } ?? "")\(f.what) (\(f.reason))") }
        }
        return 0
    }
}
