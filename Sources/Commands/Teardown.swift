import Engine
import VirtPortCore

/// Everything virtport put in the kernel, taken down with history (`virtport uninstall`, package
/// removal): forwards (table inet, libvirt accept rules, their conntrack entries), port guards
/// (table bridge, the isolated flags virtport set, guard rows closed with `off`): every rule kind
/// of `RuleKinds.all` (a new kind comes with its own `removeEverything`, nothing to add here).
enum Teardown {
    /// Every rule kind in turn (`RuleKinds.all`: forwards first, then guards), under the change
    /// lock. A failure of one kind does not keep the others from running: all are tried, then the
    /// first failure is thrown.
    /// - Returns: per kind, the line saying what went.
    static func everything(config: Config, reason: String) throws(VirtPortError) -> [String] {
        try DomainLifecycle.removeEverything(reason: reason, resources: .perProcess(config), diagnostics: StandardErrorDiagnostics())
    }
}
