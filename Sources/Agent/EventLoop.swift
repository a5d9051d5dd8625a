#if canImport(Glibc)
import Glibc
#endif
import CLinux
import Engine
import POSIX
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
final class EventLoop: @unchecked Sendable {
    typealias Handler = () -> Void
    /// A registered descriptor or timer, to remove it again.
    struct Token: Hashable, Sendable { fileprivate let id: Int }

    private let epoll: Int32
    /// Posted work and timer changes wake the loop through this eventfd.
    private let wake: Int32
    private let monitor = Monitor()
    private var nextID = 1
    private var watches: [Int32: (token: Token, handler: Handler)] = [:]
    private var timers: [(deadline: Int64, token: Token, handler: Handler)] = []
    private var posted: [Handler] = []
    /// pthread_self() of the loop thread, once it runs.
    private var loopThread: pthread_t?

    init() throws(VirtPortError) {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw .operational("cannot create the agent's event loop", cause: Errno.current("epoll_create1")) }
        wake = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard wake >= 0 else { throw .operational("cannot create the agent's event loop", cause: Errno.current("eventfd")) }
        var ev = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: wake))
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, wake, &ev) == 0 else {
            throw .operational("cannot create the agent's event loop", cause: Errno.current("epoll_ctl"))
        }
    }

    /// Starts the loop on a thread of its own.
    func start() throws(VirtPortError) {
        guard spawnDetached({ [self] in run() }) else {
            throw .operational("cannot start the agent's event loop thread", cause: Errno.current("pthread_create"))
        }
    }

    /// Calls `handler` on the loop thread whenever `fd` is readable (level-triggered: a handler
    /// that leaves data unread is called again). From any thread.
    @discardableResult
    func watch(_ fd: Int32, _ handler: @escaping Handler) throws(VirtPortError) -> Token {
        let token = monitor.locked { () -> Token in
            defer { nextID += 1 }
            let t = Token(id: nextID)
            watches[fd] = (t, handler)
            return t
        }
        var ev = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: fd))
        if epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &ev) != 0 {
            let e = Errno.current("epoll_ctl")
            monitor.locked { watches[fd] = nil }
            throw .operational("cannot watch descriptor \(fd)", cause: e)
        }
        return token
    }

    /// Stops watching `fd` (the caller closes it afterwards). From any thread.
    func unwatch(_ fd: Int32) {
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
        monitor.locked { watches[fd] = nil }
    }

    /// Calls `handler` once on the loop thread after `millis` (CLOCK_MONOTONIC). From any thread.
    @discardableResult
    func schedule(afterMillis millis: Int64, _ handler: @escaping Handler) -> Token {
        let token = monitor.locked { () -> Token in
            defer { nextID += 1 }
            let t = Token(id: nextID)
            let deadline = MonotonicClock.millis() + max(millis, 0)
            let i = timers.firstIndex { $0.deadline > deadline } ?? timers.count
            timers.insert((deadline, t, handler), at: i)
            return t
        }
        poke()
        return token
    }

    /// Cancels a timer that has not run yet (nothing if it ran or was cancelled). From any thread.
    func cancel(_ token: Token) {
        monitor.locked { timers.removeAll { $0.token == token } }
    }

    /// Runs `handler` on the loop thread soon, in the order posted. From any thread (the libvirt
    /// event thread posts what its callbacks receive).
    func post(_ handler: @escaping Handler) {
        monitor.locked { posted.append(handler) }
        poke()
    }

    /// Whether the calling thread is the loop's.
    var isLoopThread: Bool {
        monitor.locked { loopThread.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }

    private func poke() {
        var one: UInt64 = 1
        _ = Glibc.write(wake, &one, 8)
    }

    private func run() {
        monitor.locked { loopThread = pthread_self() }
        var events = [epoll_event](repeating: epoll_event(), count: 32)
        while true {
            let timeout = monitor.locked { () -> Int32 in
                guard let first = timers.first else { return -1 }
                return Int32(clamping: max(first.deadline - MonotonicClock.millis(), 0))
            }
            let n = epoll_wait(epoll, &events, Int32(events.count), timeout)
            if n < 0 && errno != EINTR { continue }
            for i in 0..<max(Int(n), 0) {
                let fd = events[i].data.fd
                if fd == wake {
                    var count: UInt64 = 0
                    _ = Glibc.read(wake, &count, 8)
                    continue
                }
                if let handler = monitor.locked({ watches[fd]?.handler }) { handler() }
            }
            let work = monitor.locked { () -> [Handler] in
                defer { posted.removeAll() }
                return posted
            }
            for handler in work { handler() }
            let now = MonotonicClock.millis()
            let due = monitor.locked { () -> [Handler] in
                var out: [Handler] = []
                while let first = timers.first, first.deadline <= now { out.append(timers.removeFirst().handler) }
                return out
            }
            for handler in due { handler() }
        }
    }
}

/// A thread that runs submitted work one item at a time, in order: what may wait (the change lock
/// behind a rebuild, a libvirt call behind a starting domain's job) waits here, not on the event
/// loop. Each queue keeps its own warm resources, so journal connections never cross threads.
final class WorkQueue: @unchecked Sendable {
    let name: String
    private let monitor = Monitor()
    private var items: [() -> Void] = []
    private var busy = false

    init(name: String) throws(VirtPortError) {
        self.name = name
        guard spawnDetached({ [self] in run() }) else {
            throw .operational("cannot start the agent's \(name) thread", cause: Errno.current("pthread_create"))
        }
    }

    /// Queues `work`; returns at once.
    func async(_ work: @escaping () -> Void) {
        monitor.locked {
            items.append(work)
            monitor.broadcast()
        }
    }

    /// Items queued or running (tests, metrics).
    var depth: Int { monitor.locked { items.count + (busy ? 1 : 0) } }

    /// Waits until everything queued so far has run, or `untilMillis` (CLOCK_MONOTONIC) passed;
    /// returns whether the queue drained.
    func drain(untilMillis deadline: Int64) -> Bool {
        monitor.locked { () -> Bool in
            while !items.isEmpty || busy {
                if !monitor.wait(untilMillis: deadline) && MonotonicClock.millis() >= deadline { return false }
            }
            return true
        }
    }

    private func run() {
        while true {
            let work = monitor.locked { () -> () -> Void in
                while items.isEmpty {
                    // A long wait, not a poll: woken by `async`.
                    _ = monitor.wait(untilMillis: MonotonicClock.millis() + 86_400_000)
                }
                busy = true
                return items.removeFirst()
            }
            work()
            monitor.locked {
                busy = false
                monitor.broadcast()
            }
        }
    }
}
