#if canImport(Glibc)
import Glibc
#endif
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
}

/// The agent's workers: each has warm resources of its own (a journal connection, a netlink
/// socket, a lock file description), so requests run side by side like hook processes do, and a
/// slow one holds only its own worker. The configuration is reread when its file changes; a
/// worker whose resources belong to an older configuration, or whose journal file was replaced or
/// removed, reopens them before its next request.
final class WorkerPool: @unchecked Sendable {
    private let monitor = Monitor()
    private var idle: [Worker]
    private var config: Config
    private var configStamp: FileStamp?
    private var generation = 0

    init(config: Config, workers: Int) throws(VirtPortError) {
        self.config = config
        configStamp = FileSystem.stamp(config.sourcePath)
        // The first worker opens the journal now: a journal that cannot be opened fails the start.
        var made = [try Worker(resources: .warm(config), generation: 0)]
        for _ in 1..<max(workers, 1) { made.append(Worker(resources: nil, generation: 0)) }
        idle = made
    }

    func currentConfig() -> Config { monitor.locked { config } }

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
        monitor.locked { () -> Worker? in
            while idle.isEmpty {
                if MonotonicClock.millis() >= deadline || !monitor.wait(untilMillis: deadline) {
                    if idle.isEmpty { return nil }
                }
            }
            return idle.removeLast()
        }
    }

    func checkin(_ worker: Worker) {
        monitor.locked {
            idle.append(worker)
            monitor.broadcast()
        }
    }

    /// The configuration, reread first when its file changed (a bad new file keeps the old one),
    /// and its generation (which changes with every reload).
    func refreshedConfig() -> (Config, Int) {
        monitor.locked { () -> (Config, Int) in
            let stamp = FileSystem.stamp(config.sourcePath)
            if stamp != configStamp {
                configStamp = stamp
                do {
                    var fresh = try Config.load(warn: false)
                    fresh.agentSocket = config.agentSocket  // the socket it listens on stays
                    config = fresh
                    generation += 1
                    AgentLog.write("configuration \(config.sourcePath) reloaded")
                } catch {
                    AgentLog.write("configuration \(config.sourcePath): \(error) (keeping the previous one)")
                }
            }
            return (config, generation)
        }
    }
}

/// One worker's warm resources.
final class Worker {
    private var resources: Resources?
    private var generation: Int
    var databasePath: String { resources?.config.databasePath ?? "" }

    init(resources: Resources?, generation: Int) {
        self.resources = resources
        self.generation = generation
    }

    /// Runs `job` on this worker's resources, (re)opening them when they are stale. A journal that
    /// cannot be opened is declined: the hook then reports it itself, as without an agent.
    func serve(_ job: Job) -> AgentFrame.Reply {
        if resources == nil || generation != job.generation
            || JournalDB.fileIdentity(path: job.config.databasePath) != resources?.journalIdentity {
            resources = nil
            do { resources = try .warm(job.config) } catch {
                AgentLog.write("cannot open the journal: \(error)")
                return .declined
            }
            generation = job.generation
        }
        guard let resources else { return .declined }
        let diagnostics = CollectedDiagnostics()
        let code = QemuWork.run(job.operation, domainName: job.domainName, input: job.input, resources: resources,
                                diagnostics: diagnostics)
        if code != 0 { resources.dropKernel() }
        return AgentFrame.Reply(served: true, code: code, lines: diagnostics.lines)
    }
}
