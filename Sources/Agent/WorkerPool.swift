import Engine
import Journal
import POSIX
import VirtPortCore

/// A qemu hook request the agent will run, with the configuration it was accepted under.
struct Job {
    var operation: QemuOperation
    var domainName: String
    var input: [UInt8]
    var config: Config
    var generation: Int

    /// The domain, for ordering its changes: its UUID when the XML has one, else its name.
    var domainKey: String { HookInput.domainUUID(input) ?? "name:" + domainName }
}

/// The agent's workers: each has warm resources of its own (a journal connection, a netlink
/// socket, a lock file description), so requests run side by side like hook processes do, and a
/// slow one holds only its own worker. The configuration is reread when its file changes; a
/// worker whose resources belong to an older configuration, or whose journal file was replaced or
/// removed, reopens them before its next request.
final class WorkerPool: Sendable {
    private struct State {
        /// Workers nobody has checked out: a worker belongs to one thread at a time, the one that
        /// checked it out, until it checks it in.
        var idle: [Worker]
        var config: Config
        var configStamp: FileStamp?
        var generation = 0
        /// Domains (`Job.domainKey`) whose work after the answer is still running, and on how
        /// many workers: the next change of such a domain waits for it.
        var finishing: [String: Int] = [:]
    }
    private let state: ConditionLock<State>
    /// Reads the configuration file again (`Config.load`; tests read their own).
    private let reload: @Sendable () throws(VirtPortError) -> Config

    /// - Parameters:
    ///   - warm: opens a worker's resources (tests give fakes); the first worker's are opened now,
    ///     so a journal that cannot be opened fails the agent's start.
    ///   - reload: reads the configuration again when its file changed.
    init(config: Config, workers: Int, warm: @escaping @Sendable (Config) throws(VirtPortError) -> Resources = Resources.warm,
         reload: @escaping @Sendable () throws(VirtPortError) -> Config = { () throws(VirtPortError) in try Config.load(warn: false) })
        throws(VirtPortError) {
        self.reload = reload
        var made = [Worker(resources: try warm(config), generation: 0, warm: warm)]
        for _ in 1..<max(workers, 1) { made.append(Worker(resources: nil, generation: 0, warm: warm)) }
        state = ConditionLock(State(idle: made, config: config, configStamp: FileSystem.stamp(config.sourcePath)))
    }

    func currentConfig() -> Config { state.withLock { $0.config } }

    /// The job for `request`, or nil when it is not this agent's to serve (another configuration
    /// file, not a qemu operation virtport acts on): the hook then does it itself.
    func job(for request: AgentFrame.Request) -> Job? {
        let (config, generation) = refreshedConfig()
        guard request.configPath == config.sourcePath, request.kind == "qemu", request.args.count >= 2,
              let op = QemuOperation(rawValue: request.args[1])
        else { return nil }
        return Job(operation: op, domainName: request.args[0], input: request.input, config: config, generation: generation)
    }

    /// A free worker, or nil when none becomes free before `untilMillis` (CLOCK_MONOTONIC).
    func checkout(untilMillis deadline: Int64) -> Worker? {
        state.withLock(waitingUntil: { !$0.idle.isEmpty }, deadline: deadline) { s, free in free ? s.idle.removeLast() : nil }
    }

    /// `key`'s work after an answer is running (`finished` when it ends).
    func finishing(_ key: String) {
        state.withLock { $0.finishing[key, default: 0] += 1 }
    }

    func finished(_ key: String) {
        state.withLock { s in
            if let n = s.finishing[key], n > 1 { s.finishing[key] = n - 1 } else { s.finishing[key] = nil }
        }
        state.broadcast()
    }

    /// Waits until no work after an answer of domain `key` is running, or `untilMillis` passed
    /// (CLOCK_MONOTONIC); false then. libvirt sends a VM's `stopped` and its next `start` back to
    /// back: the start must not begin before the stop is finished.
    func awaitFinished(_ key: String, untilMillis deadline: Int64) -> Bool {
        state.withLock(waitingUntil: { $0.finishing[key] == nil }, deadline: deadline) { _, done in done }
    }

    func checkin(_ worker: Worker) {
        state.withLock { $0.idle.append(worker) }
        state.broadcast()
    }

    /// The configuration, reread first when its file changed (a bad new file keeps the old one),
    /// and its generation (which changes with every reload).
    func refreshedConfig() -> (Config, Int) {
        state.withLock { s -> (Config, Int) in
            let stamp = FileSystem.stamp(s.config.sourcePath)
            if stamp != s.configStamp {
                s.configStamp = stamp
                do {
                    var fresh = try reload()
                    fresh.agentSocket = s.config.agentSocket  // the socket it listens on stays
                    s.config = fresh
                    s.generation += 1
                    AgentLog.write("configuration \(s.config.sourcePath) reloaded")
                } catch {
                    AgentLog.write("configuration \(s.config.sourcePath): \(error) (keeping the previous one)")
                }
            }
            return (s.config, s.generation)
        }
    }
}

/// One worker's warm resources. Not `Sendable`: one thread uses it at a time, the one that
/// checked it out of the pool (the pool's lock hands it over).
final class Worker {
    private var resources: Resources?
    private var generation: Int
    private let warm: (Config) throws(VirtPortError) -> Resources
    var databasePath: String { resources?.config.databasePath ?? "" }

    init(resources: Resources?, generation: Int, warm: @escaping (Config) throws(VirtPortError) -> Resources) {
        self.resources = resources
        self.generation = generation
        self.warm = warm
    }

    /// Runs `job` on this worker's resources, (re)opening them when they are stale. A journal that
    /// cannot be opened is declined: the hook then reports it itself, as without an agent.
    func serve(_ job: Job) -> AgentFrame.Reply {
        if left != nil { _ = finishDeferred() }  // never left over by the server; kept safe anyway
        if resources == nil || generation != job.generation
            || JournalDB.fileIdentity(path: job.config.databasePath) != resources?.journalIdentity {
            resources = nil
            do { resources = try warm(job.config) } catch {
                AgentLog.write("cannot open the journal: \(error)")
                return .declined
            }
            generation = job.generation
        }
        guard let resources else { return .declined }
        let diagnostics = CollectedDiagnostics()
        resources.defersWork = true
        let code = QemuWork.run(job.operation, domainName: job.domainName, input: job.input, resources: resources,
                                diagnostics: diagnostics)
        if resources.hasDeferredWork {
            left = (diagnostics, diagnostics.lines.count, code != 0)
        } else if code != 0 {
            resources.dropKernel()
        }
        return AgentFrame.Reply(served: true, code: code, lines: diagnostics.lines)
    }

    /// What `serve` left for after its answer: the request's diagnostics, how many lines the
    /// reply carried, whether the request failed.
    private var left: (diagnostics: CollectedDiagnostics, sent: Int, failed: Bool)?

    /// Whether the last `serve` left work for after its answer (`finishDeferred`).
    var hasDeferredWork: Bool { left != nil }

    /// After the reply was sent: the work the change left (`Resources.later`: logs, conntrack
    /// cleanups, the skeleton self-check), under the change lock its change still holds.
    /// - Returns: the warnings it emitted (already in the system log; the hook has gone).
    func finishDeferred() -> [String] {
        guard let (diagnostics, sent, failed) = left else { return [] }
        left = nil
        resources?.runDeferred()
        if failed { resources?.dropKernel() }
        return Array(diagnostics.lines.dropFirst(sent))
    }
}

@available(*, unavailable)
extension Worker: Sendable {}
