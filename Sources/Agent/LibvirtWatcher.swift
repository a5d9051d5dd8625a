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
        var connection: (any LibvirtEvents)?
        var retryMs = LibvirtWatcher.firstRetryMs
        var outage = false
        /// Bumped at every reconnect: events of an old connection are dropped.
        var epoch = 0
    }
    private let session = Locked(Session())
    private let libvirt: any LibvirtEventSource
    /// What the watcher's work ends in (`AgentContext.converge`/`reconcile`; unit tests record calls).
    private let converge: @Sendable (AgentContext, _ uuid: String, _ name: String, Domain?, _ reason: String, _ received: Int64) -> Void
    private let reconcile: @Sendable (AgentContext, [String: RunningDomain], _ reason: String) -> Void

    init(libvirt: any LibvirtEventSource = LibvirtDaemon(),
         converge: @escaping @Sendable (AgentContext, String, String, Domain?, String, Int64) -> Void = { agent, uuid, name, domain, reason, received in
             agent.converge(uuid: uuid, name: name, domain: domain, reason: reason, source: "libvirt", started: received)
         },
         reconcile: @escaping @Sendable (AgentContext, [String: RunningDomain], String) -> Void = { agent, running, reason in
             agent.reconcile(running: running, reason: reason)
         }) {
        self.libvirt = libvirt
        self.converge = converge
        self.reconcile = reconcile
    }

    func start(_ agent: AgentContext) throws(VirtPortError) {
        let uri = agent.config.libvirtURI
        guard !uri.isEmpty else { throw .invalid("libvirt_uri is \"\": the agent does not connect to libvirt") }
        try libvirt.startEventLoop()
        agent.work.async { [self] in connect(agent) }
    }

    /// On the work queue.
    private func connect(_ agent: AgentContext) {
        let uri = agent.config.libvirtURI
        let mine = session.withLock { s in
            s.epoch += 1
            return s.epoch
        }
        let c = libvirt.connect(uri: uri) { [weak self] event in
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
                agent.log.warning("agent: cannot reach libvirt at \(uri): \(libvirt.lastFailure); retrying "
                    + "with backoff up to \(Self.maxRetryMs / 1000) s (hooks keep working without the agent)")
            }
            agent.say("libvirt: \(libvirt.lastFailure); retry in \(delay) ms")
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
        reconcileAll(agent, reason: "agent: connected to libvirt")
    }

    private func reconcileAll(_ agent: AgentContext, reason: String) {
        guard let c = session.withLock({ $0.connection }) else { return }
        do {
            reconcile(agent, try c.running(), reason)
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
            reconcileAll(agent, reason: "agent: network \(name) started")
        }
    }

    private func converge(uuid: String, name: String, why: String, _ c: any LibvirtEvents, _ received: Int64,
                          _ agent: AgentContext) {
        let reason = "agent: libvirt event, domain \(why)"
        var domain: Domain?
        do {
            if let xml = try c.liveXML(uuid: uuid) { domain = try DomainXML.parse(xml) }
        } catch {
            agent.failed(error, domain: name, reason: reason)
            return
        }
        converge(agent, uuid, name, domain, reason, received)
    }
}

/// How `LibvirtWatcher` reaches libvirt: its event loop, and connections with their event
/// callbacks (`LibvirtDaemon`; unit tests hand in a fake).
protocol LibvirtEventSource: Sendable {
    /// Registers libvirt's event loop and runs it on a thread of its own (once, at start).
    func startEventLoop() throws(VirtPortError)
    /// A connection to `uri` delivering its events to `handler` (on any thread), or nil when
    /// libvirt does not answer (`lastFailure` says why).
    func connect(uri: String, handler: @escaping @Sendable (LibvirtEvent) -> Void) -> (any LibvirtEvents)?
    var lastFailure: String { get }
}

/// One connection, used on the work queue only.
protocol LibvirtEvents: AnyObject {
    /// Whether network lifecycle events are registered, and if not, libvirt's reason.
    var networkEvents: Bool { get }
    var networkProblem: String { get }
    /// The active domains with their live XML parsed.
    func running() throws(VirtPortError) -> [String: RunningDomain]
    /// The live XML of domain `uuid`, nil when it does not run.
    func liveXML(uuid: String) throws(VirtPortError) -> [UInt8]?
}

/// The real libvirt: `LibvirtEventLoop` and `LibvirtEventConnection`.
struct LibvirtDaemon: LibvirtEventSource {
    func startEventLoop() throws(VirtPortError) {
        guard LibvirtEventLoop.register() else { throw .operational("libvirt.so.0 cannot be loaded") }
        do { try Thread.detach { while true { LibvirtEventLoop.runOnce() } } } catch {
            throw .operational("cannot start libvirt's event thread", cause: error)
        }
    }

    func connect(uri: String, handler: @escaping @Sendable (LibvirtEvent) -> Void) -> (any LibvirtEvents)? {
        LibvirtEventConnection(uri: uri, handler: handler)
    }

    var lastFailure: String { LibvirtClient.lastFailure }
}

extension LibvirtEventConnection: LibvirtEvents {
    func running() throws(VirtPortError) -> [String: RunningDomain] { try RunningDomains.list(client: client) }

    func liveXML(uuid: String) throws(VirtPortError) -> [UInt8]? {
        guard let d = client.domain(uuid: uuid), d.isActive else { return nil }
        return try d.xml(inactive: false)
    }
}
