import Engine
import Journal
import POSIX
import Synchronization
import VirtPortCore

/// The agent's Prometheus textfile (`[agent] metrics_file`, node_exporter's textfile collector
/// convention: a `.prom` file replaced by rename, so the collector never reads half of one):
///
///     virtport_forwards{state="applied"} 12          journal rows by state; "pending" waits for an address
///     virtport_hook_duration_seconds_bucket{operation="start",le="0.005"} …   hooks the agent served
///     virtport_event_duration_seconds_bucket{source="lease",le="0.05"} …      event received → converged
///     virtport_heals_total 3                          things put back after someone deleted them
///     virtport_refusals_total 1                       hook requests and events refused (exit 2)
///
/// Counters live in memory (they restart at 0 with the agent, as Prometheus counters may); the
/// file is rewritten at most once a second after a change, from the work queue. Off: nothing is
/// counted to a file, nothing written.
final class Metrics: Sendable {
    static let buckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

    struct Histogram {
        var counts = [Int](repeating: 0, count: Metrics.buckets.count)
        var sum = 0.0
        var count = 0
        mutating func observe(_ seconds: Double) {
            for (i, b) in Metrics.buckets.enumerated() where seconds <= b { counts[i] += 1 }
            sum += seconds
            count += 1
        }
    }

    private struct Counts {
        var hooks: [String: Histogram] = [:]
        var events: [String: Histogram] = [:]
        var heals = 0
        var refusals = 0
        var writeScheduled = false
    }

    private let loop: EventLoop
    private let counts = Mutex(Counts())

    init(loop: EventLoop) { self.loop = loop }

    /// A hook request the agent served: its operation, exit status and time.
    func hook(operation: String, code: Int32, micros: Int64) {
        counts.withLock { c in
            c.hooks[operation, default: Histogram()].observe(Double(micros) / 1e6)
            if code == 2 { c.refusals += 1 }
        }
    }

    func event(source: String, micros: Int64) {
        counts.withLock { $0.events[source, default: Histogram()].observe(Double(micros) / 1e6) }
    }

    /// One heal: a check that had to put something back.
    func healed() { counts.withLock { $0.heals += 1 } }
    func refused() { counts.withLock { $0.refusals += 1 } }

    /// Something changed: the file is rewritten within a second (a burst is one write). From any thread.
    func changed(_ agent: AgentContext) {
        guard !agent.config.metricsFile.isEmpty else { return }
        let first = counts.withLock { c -> Bool in
            defer { c.writeScheduled = true }
            return !c.writeScheduled
        }
        guard first else { return }
        loop.schedule(afterMillis: 1000) { [self] in
            agent.work.async { [self] in
                counts.withLock { $0.writeScheduled = false }
                write(agent)
            }
        }
    }

    /// Writes the file now (on the work queue).
    func write(_ agent: AgentContext) {
        let path = agent.config.metricsFile
        guard !path.isEmpty else { return }
        var states: [String: Int] = [:]
        for s in MappingState.allCases { states[s.rawValue] = 0 }
        states["pending"] = 0
        let rows = (try? agent.withResources { (r) throws(VirtPortError) in try r.journal().activeMappings() }) ?? []
        for row in rows {
            states[row.mapping.isPending ? "pending" : row.state.rawValue, default: 0] += 1
        }
        do { try IO.writeFile(path, render(states: states), mode: 0o644) } catch {
            agent.say("metrics: \(error)")
        }
    }

    func render(states: [String: Int]) -> String {
        let c = counts.withLock { $0 }
        var out = ""
        out += "# HELP virtport_forwards Journal mappings by state (pending: waiting for a guest address).\n"
        out += "# TYPE virtport_forwards gauge\n"
        for (state, n) in states.sorted(by: { $0.key < $1.key }) { out += "virtport_forwards{state=\"\(state)\"} \(n)\n" }
        out += Self.histogram("virtport_hook_duration_seconds", "Hook requests the agent served, by qemu operation.",
                              label: "operation", c.hooks)
        out += Self.histogram("virtport_event_duration_seconds",
                              "From an event (libvirt, lease, nf_tables) to its domain converged.", label: "source", c.events)
        out += "# HELP virtport_heals_total Times virtport put back rules someone else deleted.\n"
        out += "# TYPE virtport_heals_total counter\nvirtport_heals_total \(c.heals)\n"
        out += "# HELP virtport_refusals_total Hook requests and events refused (invalid metadata, policy, conflict).\n"
        out += "# TYPE virtport_refusals_total counter\nvirtport_refusals_total \(c.refusals)\n"
        return out
    }

    static func histogram(_ name: String, _ help: String, label: String, _ series: [String: Histogram]) -> String {
        var out = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (key, h) in series.sorted(by: { $0.key < $1.key }) {
            for (i, b) in buckets.enumerated() { out += "\(name)_bucket{\(label)=\"\(key)\",le=\"\(b)\"} \(h.counts[i])\n" }
            out += "\(name)_bucket{\(label)=\"\(key)\",le=\"+Inf\"} \(h.count)\n"
            out += "\(name)_sum{\(label)=\"\(key)\"} \(h.sum)\n\(name)_count{\(label)=\"\(key)\"} \(h.count)\n"
        }
        return out
    }
}
