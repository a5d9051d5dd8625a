import Engine
import Journal
import POSIX
import VirtPortCore

/// A source of work the agent watches besides hook requests (README "Agent"): libvirt's events,
/// DHCP lease files, nf_tables notifications. Each is started once and registers its descriptors
/// and timers on the agent's event loop; its work runs on the agent's one work queue.
protocol Watcher: AnyObject, Sendable {
    /// For the agent's log: "libvirt events", "leases", …
    var name: String { get }
    /// Registers the watcher's sources. A failure is logged and the agent runs without it (the
    /// hooks never depend on the agent).
    func start(_ agent: AgentContext) throws(VirtPortError)
}

/// What every watcher shares: the loop, the work queue, the configuration (reread when its file
/// changes), the logs and the metrics.
///
/// All watcher work (converging a domain, healing, reconciling) runs on `work`, one item at a
/// time: the agent's own changes never race each other, and they share one set of warm resources.
/// Against hooks (other processes, or the agent's hook workers) the change lock arbitrates, as
/// between any two hooks.
final class AgentContext: Sendable {
    let loop: EventLoop
    let work: WorkQueue
    let verbose: Bool
    let metrics: Metrics
    private let pool: WorkerPool
    private let checkpointer: Checkpointer
    /// The work queue's warm resources and the configuration generation they belong to: only the
    /// work queue's thread uses them (the lock is never contended; it makes that a fact of the type).
    private struct Warm {
        var resources: Resources?
        var generation = -1
    }
    private let warm = Locked(Warm())

    init(loop: EventLoop, pool: WorkerPool, checkpointer: Checkpointer, verbose: Bool) throws(VirtPortError) {
        self.loop = loop
        self.pool = pool
        self.checkpointer = checkpointer
        self.verbose = verbose
        work = try WorkQueue(name: "events")
        metrics = Metrics(loop: loop)
    }

    /// The configuration, reread first when its file changed (a bad new file keeps the old one).
    var config: Config { pool.refreshedConfig().0 }

    /// Decisions go to the system log (`EventLog`) like a hook's.
    var log: EventLog { EventLog(config: config) }

    /// Runs `body` with the work queue's warm resources (reopened for a new configuration or a
    /// replaced journal; a fresh netlink socket after a failure). On `work` only.
    func withResources<T>(_ body: (Resources) throws(VirtPortError) -> T) throws(VirtPortError) -> T {
        let (config, generation) = pool.refreshedConfig()
        defer { checkpointer.request(path: config.databasePath) }
        return try warm.withLock { (w) throws(VirtPortError) -> T in
            if w.resources == nil || generation != w.generation
                || JournalDB.fileIdentity(path: config.databasePath) != w.resources?.journalIdentity {
                w.resources = try .warm(config)
                w.generation = generation
            }
            guard let r = w.resources else { throw .operational("no resources") }
            do throws(VirtPortError) { return try body(r) } catch {
                r.dropKernel()
                throw error
            }
        }
    }

    /// Brings one domain to what it declares now (`DomainSync`): `domain` is its live XML parsed,
    /// nil when it no longer runs. A refusal (metadata that fails validation or the policy, a
    /// conflict) changes nothing and is logged with the reason; so is any other failure. On `work` only.
    /// - Parameter started: CLOCK_MONOTONIC µs when the event arrived (metrics).
    func converge(uuid: String, name: String, domain: Domain?, reason: String, source: String, started: Int64) {
        // A hook's work after its answer for this domain ends first (README "Agent: what is done
        // after the answer"): its log lines and cleanups come before this change's.
        _ = pool.awaitFinished(uuid.lowercased(), untilMillis: MonotonicClock.millis() + AgentServer.finishingWaitMs)
        do throws(VirtPortError) {
            try withResources { (r) throws(VirtPortError) in
                let diagnostics = CollectedDiagnostics()
                if let domain {
                    try DomainSync.apply(domain, reason: reason, resources: r, diagnostics: diagnostics)
                } else {
                    try DomainSync.remove(uuid: uuid, reason: reason, resources: r, diagnostics: diagnostics)
                }
            }
        } catch {
            failed(error, domain: name, reason: reason)
        }
        metrics.event(source: source, micros: MonotonicClock.micros() - started)
        metrics.changed(self)
    }

    /// Logs why a domain could not be converged: a refusal (invalid metadata, policy, conflict:
    /// nothing changed) or trouble (journal, kernel, libvirt).
    func failed(_ error: VirtPortError, domain name: String, reason: String) {
        let line = "domain '\(Quoted.message(name))' (\(reason)): \(error)"
        if error.code == .invalidInput {
            log.refused(line + " (nothing changed; its running forwards are untouched)")
            metrics.refused()
        } else {
            log.warning(line + " (run 'virtport reconcile')")
        }
        say(line)
    }

    /// A full reconcile against `running` (at every libvirt (re)connect). On `work` only.
    func reconcile(running: [String: RunningDomain], reason: String) {
        do throws(VirtPortError) {
            let fixes = try withResources { (r) throws(VirtPortError) -> [Fix] in
                try Reconciler(resources: r, running: running, diagnostics: CollectedDiagnostics()).run(dryRun: false, reason: reason)
            }
            say("\(reason): reconcile made \(fixes.count) fixes")
        } catch {
            log.warning("agent: \(reason): reconcile failed: \(error)")
            say("\(reason): reconcile failed: \(error)")
        }
        metrics.changed(self)
    }

    /// A line on the agent's stderr with `--verbose`.
    func say(_ line: String) {
        if verbose { AgentLog.write(line) }
    }
}

/// The watchers `virtport agent` starts, in order: nf_tables first (a flush while libvirt is
/// being reached is still healed), then leases, then libvirt (whose connect reconciles).
enum Watchers {
    static func all() -> [any Watcher] { [HealWatcher(), LeaseWatcher(), LibvirtWatcher()] }
}
