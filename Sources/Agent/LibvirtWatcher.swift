import Engine
import Libvirt
import POSIX
import VirtPortCore

/// libvirt's events (README "Agent"): domain lifecycle, domain metadata change (`virsh metadata
/// --live`, `virtport add` from elsewhere), network lifecycle. Each event only names a domain or
/// network; the work reads its state *now* and converges it (running → plan its live XML, gone →
/// take down what the journal holds), so events that arrive late, twice or out of order still end
/// in the right state, and a hook that already did the work makes the event a no-op.
///
/// libvirt's own event loop runs on a thread of its own; its callbacks only queue the event on
/// the agent's work queue, where the libvirt calls happen (never on the hook-serving path). When
/// the connection closes (libvirtd, virtqemud or virtnetworkd restarted or stopped) the agent
/// reconnects with backoff, 0.5 s doubling to 30 s, and reconciles at every (re)connect, so VMs
/// started or stopped while it was away converge.
final class LibvirtWatcher: Watcher {
    let name = "libvirt events"
    static let firstRetryMs: Int64 = 500
    static let maxRetryMs: Int64 = 30_000

    /// On the work queue only (`Locked`, not `Mutex`: the connection is not `Sendable`).
    private struct Session {
        var connection: LibvirtEventConnection?
        var retryMs = LibvirtWatcher.firstRetryMs
        var outage = false
        /// Bumped at every reconnect: events of an old connection are dropped.
        var epoch = 0
    }
    private let session = Locked(Session())

    func start(_ agent: AgentContext) throws(VirtPortError) {
        let uri = agent.config.libvirtURI
        guard !uri.isEmpty else { throw .invalid("libvirt_uri is \"\": the agent does not connect to libvirt") }
        guard LibvirtEventLoop.register() else { throw .operational("libvirt.so.0 cannot be loaded") }
        do { try Thread.detach { while true { LibvirtEventLoop.runOnce() } } } catch {
            throw .operational("cannot start libvirt's event thread", cause: error)
        }
        agent.work.async { [self] in connect(agent) }
    }

    /// On the work queue.
    private func connect(_ agent: AgentContext) {
        let uri = agent.config.libvirtURI
        let mine = session.withLock { s in
            s.epoch += 1
            return s.epoch
        }
        let c = LibvirtEventConnection(uri: uri) { [weak self] event in
            let received = MonotonicClock.micros()
            guard let self else { return }
            agent.work.async { self.handle(event, epoch: mine, received: received, agent) }
        }
        guard let c else {
            let (firstFailure, delay) = session.withLock { s in
                defer {
                    s.outage = true
                    s.retryMs = min(s.retryMs * 2, Self.maxRetryMs)
                }
                return (!s.outage, s.retryMs)
            }
            if firstFailure {
                agent.log.warning("agent: cannot reach libvirt at \(uri): \(LibvirtClient.lastFailure); retrying "
                    + "with backoff up to \(Self.maxRetryMs / 1000) s (hooks keep working without the agent)")
            }
            agent.say("libvirt: \(LibvirtClient.lastFailure); retry in \(delay) ms")
            agent.loop.schedule(afterMillis: delay) { agent.work.async { [self] in connect(agent) } }
            return
        }
        session.withLock { s in
            s.connection = c
            s.retryMs = Self.firstRetryMs
            s.outage = false
        }
        agent.log.notice("agent: connected to libvirt at \(uri), watching domain and network events; reconciling")
        if !c.networkEvents {
            agent.log.info("agent: libvirt at \(uri) sends no network events (\(c.networkProblem)); "
                + "network started is handled by the network hook")
        }
        agent.say("libvirt: connected to \(uri)")
        reconcile(agent, reason: "agent: connected to libvirt")
    }

    private func reconcile(_ agent: AgentContext, reason: String) {
        guard let c = session.withLock({ $0.connection }) else { return }
        do {
            agent.reconcile(running: try RunningDomains.list(client: c.client), reason: reason)
        } catch {
            agent.log.warning("agent: \(reason): cannot list the running domains: \(error)")
        }
    }

    /// On the work queue.
    private func handle(_ event: LibvirtEvent, epoch: Int, received: Int64, _ agent: AgentContext) {
        guard let c = session.withLock({ s in epoch == s.epoch ? s.connection : nil }) else { return }
        switch event {
        case .closed(let reason):
            session.withLock { $0.connection = nil }
            agent.log.warning("agent: lost the libvirt connection (reason \(reason): libvirtd stopped or restarted); reconnecting")
            agent.say("libvirt: connection closed (\(reason))")
            agent.loop.schedule(afterMillis: Self.firstRetryMs) { agent.work.async { [self] in connect(agent) } }
        case .lifecycle(let uuid, let name, let kind):
            guard kind == LibvirtEvent.domainStarted || kind == LibvirtEvent.domainStopped else { return }
            converge(uuid: uuid, name: name, why: kind == LibvirtEvent.domainStarted ? "started" : "stopped", c, received, agent)
        case .metadata(let uuid, let name, let uri):
            guard uri == DomainXML.namespace else { return }
            converge(uuid: uuid, name: name, why: "metadata changed", c, received, agent)
        case .network(let name, let kind):
            guard kind == LibvirtEvent.networkStarted else { return }
            reconcile(agent, reason: "agent: network \(name) started")
        }
    }

    private func converge(uuid: String, name: String, why: String, _ c: LibvirtEventConnection, _ received: Int64,
                          _ agent: AgentContext) {
        let reason = "agent: libvirt event, domain \(why)"
        var domain: Domain?
        if let d = c.client.domain(uuid: uuid), d.isActive {
            do {
                domain = try DomainXML.parse(try d.xml(inactive: false))
            } catch {
                agent.failed(error, domain: name, reason: reason)
                return
            }
        }
        agent.converge(uuid: uuid, name: name, domain: domain, reason: reason, source: "libvirt", started: received)
    }
}
