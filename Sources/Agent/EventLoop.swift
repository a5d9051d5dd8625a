import Engine
import POSIX
import Synchronization
import VirtPortCore

/// The agent's one event loop, on a thread of its own (epoll): every input the agent watches is a
/// source here — a descriptor that became readable (inotify, nf_tables notifications, the libvirt
/// event thread's wake-ups), a timer that fell due (a debounce, a back-off, a retry), or work
/// posted from another thread. Handlers run on the loop thread one at a time and must be short:
/// anything that may wait (the change lock, libvirt's API) goes to a `WorkQueue`. With nothing
/// due the loop sleeps in epoll_wait with no timeout: an idle agent does not wake up.
///
/// Hook requests are not sources here: they have their own threads and workers (`AgentServer`),
/// so nothing on this loop can delay a VM start.
final class EventLoop: Sendable {
    typealias Handler = @Sendable () -> Void
    /// A registered descriptor or timer, to remove it again.
    struct Token: Hashable, Sendable { fileprivate let id: Int }

    /// What any thread may register, under `state`'s mutex; the loop takes handlers out and runs
    /// them after releasing it.
    private struct State {
        var nextID = 1
        var watches: [Int32: (token: Token, handler: Handler)] = [:]
        var timers: [(deadline: Int64, token: Token, handler: Handler)] = []
        var posted: [Handler] = []
        /// The loop thread, once it runs.
        var loopThread: Thread.ID?

        mutating func token() -> Token {
            defer { nextID += 1 }
            return Token(id: nextID)
        }
    }

    private let epoll: Epoll
    /// Posted work and timer changes wake the loop through this eventfd.
    private let wake: EventCounter
    private let state = Mutex(State())

    init() throws(VirtPortError) {
        do {
            epoll = try Epoll()
            wake = try EventCounter()
            try epoll.add(wake.descriptor)
        } catch {
            throw .operational("cannot create the agent's event loop", cause: error)
        }
    }

    /// Starts the loop on a thread of its own.
    func start() throws(VirtPortError) {
        do { try Thread.detach { [self] in run() } } catch {
            throw .operational("cannot start the agent's event loop thread", cause: error)
        }
    }

    /// Calls `handler` on the loop thread whenever `fd` is readable (level-triggered: a handler
    /// that leaves data unread is called again). From any thread.
    @discardableResult
    func watch(_ fd: FileDescriptor, _ handler: @escaping Handler) throws(VirtPortError) -> Token {
        let token = state.withLock { s in
            let t = s.token()
            s.watches[fd.rawValue] = (t, handler)
            return t
        }
        do { try epoll.add(fd) } catch {
            state.withLock { _ = $0.watches.removeValue(forKey: fd.rawValue) }
            throw .operational("cannot watch descriptor \(fd.rawValue)", cause: error)
        }
        return token
    }

    /// Stops watching `fd` (the caller closes it afterwards). From any thread.
    func unwatch(_ fd: FileDescriptor) {
        epoll.remove(fd)
        state.withLock { _ = $0.watches.removeValue(forKey: fd.rawValue) }
    }

    /// Calls `handler` once on the loop thread after `millis` (CLOCK_MONOTONIC). From any thread.
    @discardableResult
    func schedule(afterMillis millis: Int64, _ handler: @escaping Handler) -> Token {
        let deadline = MonotonicClock.millis() + max(millis, 0)
        let token = state.withLock { s in
            let t = s.token()
            let i = s.timers.firstIndex { $0.deadline > deadline } ?? s.timers.count
            s.timers.insert((deadline, t, handler), at: i)
            return t
        }
        wake.signal()
        return token
    }

    /// Cancels a timer that has not run yet (nothing if it ran or was cancelled). From any thread.
    func cancel(_ token: Token) {
        state.withLock { $0.timers.removeAll { $0.token == token } }
    }

    /// Runs `handler` on the loop thread soon, in the order posted. From any thread (the libvirt
    /// event thread posts what its callbacks receive).
    func post(_ handler: @escaping Handler) {
        state.withLock { $0.posted.append(handler) }
        wake.signal()
    }

    /// Whether the calling thread is the loop's.
    var isLoopThread: Bool {
        let me = Thread.current
        return state.withLock { $0.loopThread == me }
    }

    private func run() {
        let me = Thread.current
        state.withLock { $0.loopThread = me }
        var failing = false
        while true {
            let timeout = state.withLock { s -> Int32 in
                guard let first = s.timers.first else { return -1 }
                return Int32(clamping: max(first.deadline - MonotonicClock.millis(), 0))
            }
            let ready: [FileDescriptor]
            do {
                ready = try epoll.wait(timeoutMs: timeout)
                failing = false
            } catch {
                // Not EINTR (retried below `wait`): a loop that cannot wait must not spin either.
                if !failing { AgentLog.write("event loop: \(error.function): \(error); retrying every 100 ms") }
                failing = true
                Thread.sleep(millis: 100)
                continue
            }
            for fd in ready {
                if fd == wake.descriptor {
                    wake.reset()
                    continue
                }
                if let handler = state.withLock({ $0.watches[fd.rawValue]?.handler }) { handler() }
            }
            let work = state.withLock { s -> [Handler] in
                defer { s.posted.removeAll() }
                return s.posted
            }
            for handler in work { handler() }
            let now = MonotonicClock.millis()
            let due = state.withLock { s -> [Handler] in
                var out: [Handler] = []
                while let first = s.timers.first, first.deadline <= now { out.append(s.timers.removeFirst().handler) }
                return out
            }
            for handler in due { handler() }
        }
    }
}

/// A thread that runs submitted work one item at a time, in order: what may wait (the change lock
/// behind a rebuild, a libvirt call behind a starting domain's job) waits here, not on the event
/// loop. Each queue keeps its own warm resources, so journal connections never cross threads.
final class WorkQueue: Sendable {
    typealias Work = @Sendable () -> Void
    let name: String
    private struct State {
        var items: [Work] = []
        var busy = false
        /// The queue's thread, once it runs.
        var thread: Thread.ID?
    }
    private let state = ConditionLock(State())

    init(name: String) throws(VirtPortError) {
        self.name = name
        do { try Thread.detach { [self] in run() } } catch {
            throw .operational("cannot start the agent's \(name) thread", cause: error)
        }
    }

    /// Queues `work`; returns at once.
    func async(_ work: @escaping Work) {
        state.withLock { $0.items.append(work) }
        state.broadcast()
    }

    /// Items queued or running (tests, metrics).
    var depth: Int { state.withLock { $0.items.count + ($0.busy ? 1 : 0) } }

    /// Whether the calling thread is the queue's.
    var isQueueThread: Bool {
        let me = Thread.current
        return state.withLock { $0.thread == me }
    }

    /// Waits until everything queued so far has run, or `untilMillis` (CLOCK_MONOTONIC) passed;
    /// returns whether the queue drained.
    func drain(untilMillis deadline: Int64) -> Bool {
        state.withLock(waitingUntil: { $0.items.isEmpty && !$0.busy }, deadline: deadline) { _, drained in drained }
    }

    private func run() {
        let me = Thread.current
        state.withLock { $0.thread = me }
        while true {
            // A wait without a deadline, not a poll: woken by `async`.
            let work = state.withLock(waitingUntil: { !$0.items.isEmpty }, deadline: nil) { s, _ -> Work in
                s.busy = true
                return s.items.removeFirst()
            }
            work()
            state.withLock { $0.busy = false }
            state.broadcast()
        }
    }
}
