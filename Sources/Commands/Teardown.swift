import Engine
import VirtPortCore

/// Everything virtport put in the kernel, taken down with history (`virtport uninstall`, package
/// removal): forwards (table inet, libvirt accept rules, their conntrack entries), port guards
/// (table bridge, the isolated flags virtport set, guard rows closed with `off`). One function
/// for every caller, so a new kind of rule is added here once.
enum Teardown {
    struct Result {
        var forwards: Int
        var guards: Int
    }

    /// Forwards first, then guards; each part under the change lock. A failure of one part does
    /// not keep the other from running: both are tried, then the first failure is thrown.
    static func everything(config: Config, reason: String) throws(VirtPortError) -> Result {
        let resources = Resources.perProcess(config)
        let diagnostics = StandardErrorDiagnostics()
        var result = Result(forwards: 0, guards: 0)
        var failure: VirtPortError?
        do { result.forwards = try Forwarder(resources: resources, diagnostics: diagnostics).removeEverything(reason: reason) } catch {
            failure = error
        }
        do { result.guards = try GuardSync.removeEverything(reason: reason, resources: resources, diagnostics: diagnostics) } catch {
            failure = failure ?? error
        }
        if let failure { throw failure }
        return result
    }
}
