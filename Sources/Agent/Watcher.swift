import Engine
import VirtPortCore

/// A source of work the agent watches besides hook requests (README "Agent"): libvirt's events,
/// DHCP lease files, nf_tables notifications. Each is started once, registers its descriptors and
/// timers on the agent's event loop, and does its work on a `WorkQueue` of its own.
protocol Watcher: AnyObject {
    /// For the agent's log: "libvirt events", "leases", …
    var name: String { get }
    /// Registers the watcher's sources. A failure is logged and the agent runs without it (the
    /// hooks never depend on the agent).
    func start(_ agent: AgentContext) throws(VirtPortError)
}

/// What every watcher shares: the loop, the configuration (reread when its file changes), the
/// system log and the agent's log.
final class AgentContext: @unchecked Sendable {
    let loop: EventLoop
    let verbose: Bool
    private let pool: WorkerPool

    init(loop: EventLoop, pool: WorkerPool, verbose: Bool) {
        self.loop = loop
        self.pool = pool
        self.verbose = verbose
    }

    /// The configuration, reread first when its file changed (a bad new file keeps the old one).
    var config: Config { pool.refreshedConfig().0 }

    /// Decisions go to the system log (`EventLog`) like a hook's.
    var log: EventLog { EventLog(config: config) }
}

/// The watchers `virtport agent` starts, in order.
enum Watchers {
    static func all() -> [any Watcher] { [] }
}
