#if canImport(Glibc)
import Glibc
#endif
public import Engine
import Journal
import POSIX
public import VirtPortCore

// `virtport agent` (README "Agent"): a long-lived process that keeps journals open (prepared
// statements, WAL index, no checkpoint inside a hook) and netlink sockets, and does the work of
// the qemu hooks that hand it over through a unix socket. It is never needed: a hook that finds no
// agent, a busy one, or one of another configuration does the same work itself.
//
// Nobody can hold it (README "Security"): each connection is read on a thread of its own with a
// deadline for the whole request; requests run on a small pool of warm resources, so a slow one
// delays nobody else; a request runs only after the agent *claims* it by a byte the hook is still
// waiting for — a hook that gave up has shut its socket, the claim fails, and the request is
// dropped instead of being executed late.

/// The agent's side of the socket.
public final class AgentServer: Sendable {
    /// How long a client may take to send its whole request.
    static let requestDeadlineMs: Int64 = 2_000
    /// How long a request may wait for a free worker before the agent declines it (the hook, which
    /// waits `AgentProtocol.claimTimeoutMs` for the claim, then does the work itself at once).
    static let workerWaitMs: Int64 = 1_000
    /// Connections being read or served at once; more are closed at once (the hook falls back).
    static let maxConnections = 64

    private let listener: FileDescriptor
    private let socketPath: String
    private let verbose: Bool
    private let checkpointer: Checkpointer
    private let pool: WorkerPool
    /// The event loop every watcher's sources run on (libvirt events, leases, nf_tables).
    let context: AgentContext
    private let watchers: [any Watcher]
    /// Connection threads are kept and reused (a new thread per request cost a fresh stack and
    /// malloc arena each time: ~0.5 ms of a 5 ms hook).
    private struct Connections {
        /// Being read or served.
        var open = 0
        var idleReaders = 0
        /// Accepted, waiting for a reader.
        var handoff: [FileDescriptor] = []
    }
    private let connections = ConditionLock(Connections())
    /// After `accept` ran out of descriptors or memory: how long the listener is left alone.
    static let exhaustedBackoffMs: Int64 = 100

    /// - Parameter watchers: what the agent watches besides hook requests (`Watchers.all()`).
    init(config: Config, verbose: Bool, workers: Int = 4, watchers: [any Watcher]) throws(VirtPortError) {
        self.verbose = verbose
        socketPath = config.agentSocket
        pool = try WorkerPool(config: config, workers: workers)
        listener = try Self.listen(on: config.agentSocket)
        checkpointer = try Checkpointer(verbose: verbose)
        context = try AgentContext(loop: try EventLoop(), pool: pool, checkpointer: checkpointer, verbose: verbose)
        self.watchers = watchers
    }

    deinit {
        listener.close()
        FileSystem.remove(socketPath)
    }

    /// The agent as `virtport agent` runs it: every watcher of `Watchers.all()`.
    public convenience init(config: Config, verbose: Bool) throws(VirtPortError) {
        try self.init(config: config, verbose: verbose, watchers: Watchers.all())
    }

    /// Serves hooks until the process is killed; the watchers run on the event loop.
    public func serve() -> Never {
        let config = pool.currentConfig()
        AgentLog.write("listening on \(socketPath) (journal \(config.databasePath), table inet \(config.table))")
        do { try context.loop.start() } catch { AgentLog.write("\(error): watching nothing, serving hooks only") }
        for w in watchers {
            do { try w.start(context) } catch {
                AgentLog.write("\(w.name): \(error) (not watched; the hooks and the other watchers go on)")
                context.log.warning("agent: \(w.name) not watched: \(error)")
            }
        }
        var trouble: Errno?
        var refusedSince = 0
        while true {
            let client: FileDescriptor
            switch UnixSocket.accept(listener) {
            case .connection(let c):
                if let e = trouble {
                    AgentLog.write("accepting connections again (after \(e.function): \(e), \(refusedSince) retries)")
                    trouble = nil
                }
                client = c
            case .again:
                continue
            case .exhausted(let e), .failed(let e):
                // Out of descriptors (EMFILE) or memory, or a listener in trouble: the connection
                // stays queued (its hook falls back after its claim timeout) and accepting again at
                // once would fail at once. Leave the listener alone for a while; say so once.
                if trouble?.code != e.code {
                    AgentLog.write("\(e.function): \(e); connections wait in the backlog, retrying every "
                        + "\(Self.exhaustedBackoffMs) ms (hooks fall back to doing the work themselves)")
                    refusedSince = 0
                }
                trouble = e
                refusedSince += 1
                Thread.sleep(millis: Self.exhaustedBackoffMs)
                continue
            }
            enum Admission { case reader, newReader, refused }
            let admission = connections.withLock { c -> Admission in
                if c.open >= Self.maxConnections { return .refused }
                c.open += 1
                c.handoff.append(client)
                return c.idleReaders > c.handoff.count - 1 ? .reader : .newReader
            }
            switch admission {
            case .refused:
                client.close()  // EOF: the hook does the work itself
            case .reader:
                connections.broadcast()
            case .newReader:
                do { try Thread.detach { [self] in readerLoop() } } catch {
                    // No thread: take the connection back and refuse it.
                    let taken = connections.withLock { c -> FileDescriptor? in
                        guard let i = c.handoff.firstIndex(of: client) else { return nil }
                        c.open -= 1
                        return c.handoff.remove(at: i)
                    }
                    taken?.close()
                }
            }
        }
    }

    /// A connection thread: serves handed-over connections one after another, waiting idle in
    /// between; at most `maxConnections` exist.
    private func readerLoop() {
        while true {
            connections.withLock { $0.idleReaders += 1 }
            let client = connections.withLock(waitingUntil: { !$0.handoff.isEmpty }, deadline: nil) { c, _ -> FileDescriptor in
                c.idleReaders -= 1
                return c.handoff.removeFirst()
            }
            handle(client)
            client.close()
            connections.withLock { $0.open -= 1 }
        }
    }

    private func handle(_ client: FileDescriptor) {
        let accepted = MonotonicClock.millis()
        guard let peer = UnixSocket.peer(client), peer.uid == 0 || peer.uid == getuid() else {
            AgentLog.write("refused a connection from uid \(UnixSocket.peer(client)?.uid ?? UInt32.max)")
            return
        }
        guard let frame = FrameIO.receive(client, timeoutMs: Int32(Self.requestDeadlineMs)),
              let request = AgentFrame.decodeRequest(frame)
        else {
            AgentLog.write("dropped a malformed, oversize or too slow request")
            return
        }
        // Escaped: a domain name is whatever its editor wrote (a line break would forge log lines).
        let summary = Quoted.cell("\(request.kind) \(request.args.joined(separator: " "))")
        guard let job = pool.job(for: request) else {
            _ = FrameIO.send(client, AgentFrame.encode(AgentFrame.Reply.declined))
            if verbose && request.kind != AgentFrame.probeKind {
                AgentLog.write("\(summary): not served (another configuration or operation)")
            }
            return
        }
        guard let worker = pool.checkout(untilMillis: accepted + Self.workerWaitMs) else {
            AgentLog.write("\(summary): every worker busy, declined (the hook does it itself)")
            _ = FrameIO.send(client, AgentFrame.encode(AgentFrame.Reply.declined))
            return
        }
        defer { pool.checkin(worker) }
        // The claim: from here on the hook waits for our reply. A hook that gave up has shut its
        // socket for reading, so this fails and the request is never executed late.
        guard (try? client.writeAll(AgentFrame.claim, socket: true)) != nil else {
            AgentLog.write("\(summary): its hook gave up before a worker was free; not executed")
            return
        }
        // The same domain's work after an earlier answer (its `stopped` before this `start`) ends
        // first. Bounded: that work is a few system calls; past the deadline this change goes on.
        let key = job.domainKey
        if !pool.awaitFinished(key, untilMillis: MonotonicClock.millis() + Self.finishingWaitMs) {
            AgentLog.write("\(summary): the domain's previous change still finishing after "
                + "\(Self.finishingWaitMs) ms; going on")
        }
        let started = nowMicros()
        let reply = worker.serve(job)
        // Work the hook's caller does not wait for (README "Agent: what is done after the
        // answer") runs after the reply, on this worker, before it takes another request.
        let deferring = worker.hasDeferredWork
        if deferring { pool.finishing(key) }
        _ = FrameIO.send(client, AgentFrame.encode(reply))
        let answered = nowMicros() - started
        var after = ""
        if deferring {
            for line in worker.finishDeferred() { AgentLog.write("\(summary): after the answer: \(line)") }
            after = " (then \(nowMicros() - started - answered) µs after the answer)"
        }
        checkpointer.request(path: worker.databasePath)
        context.metrics.hook(operation: job.operation.rawValue, code: reply.code, micros: answered)
        context.metrics.changed(context)
        if verbose {
            AgentLog.write("\(summary): " + (reply.served ? "exit \(reply.code)" : "not served")
                + " in \(answered) µs" + after)
        }
        // After its log line: the domain's next request is logged after this one.
        if deferring { pool.finished(key) }
    }

    /// How long a change waits for its domain's work after an earlier answer.
    static let finishingWaitMs: Int64 = 10_000

    /// Binds and listens on `path` (mode 0600, its directory created 0755). A path where another
    /// agent answers is an error; a stale socket file is replaced.
    static func listen(on path: String) throws(VirtPortError) -> FileDescriptor {
        if let other = UnixSocket.connect(to: path) {
            other.close()
            throw .operational("another virtport agent is already listening on \(path)")
        }
        try IO.makeDirectories(FileSystem.dirname(path), mode: 0o755)
        FileSystem.remove(path)
        do { return try UnixSocket.listen(on: path, backlog: 128) } catch where error.code == ENAMETOOLONG {
            throw .invalid("agent socket path \(path) is empty or too long")
        } catch {
            throw .operational("cannot listen on the agent socket \(path)", cause: error)
        }
    }
}
