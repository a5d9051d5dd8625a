#if canImport(Glibc)
import Glibc
#endif
import CLinux

/// An epoll instance watching descriptors for readability (level-triggered). The agent's event
/// loop is built on it. A value: whoever created it closes it.
public struct Epoll: Sendable {
    public let descriptor: FileDescriptor

    /// Wraps epoll_create1(2) with EPOLL_CLOEXEC.
    public init() throws(Errno) {
        descriptor = FileDescriptor(rawValue: try valueOrErrno("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) })
    }

    /// Reports `fd` when it is readable (or hung up). Wraps epoll_ctl(2) EPOLL_CTL_ADD.
    public func add(_ fd: FileDescriptor) throws(Errno) {
        var ev = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: fd.rawValue))
        _ = try valueOrErrno("epoll_ctl") { epoll_ctl(descriptor.rawValue, EPOLL_CTL_ADD, fd.rawValue, &ev) }
    }

    /// Stops reporting `fd` (nothing if it was not watched). Wraps epoll_ctl(2) EPOLL_CTL_DEL.
    public func remove(_ fd: FileDescriptor) {
        _ = retryingOnInterrupt { epoll_ctl(descriptor.rawValue, EPOLL_CTL_DEL, fd.rawValue, nil) }
    }

    /// Waits until a watched descriptor is ready or `timeoutMs` passed (-1: no timeout) and
    /// returns the ready ones (at most `max`; [] on timeout). A signal restarts the wait with the
    /// full timeout (the caller's timers recompute it at the next call). Wraps epoll_wait(2).
    public func wait(timeoutMs: Int32, max: Int = 32) throws(Errno) -> [FileDescriptor] {
        try withUnsafeTemporaryAllocation(of: epoll_event.self, capacity: max) { (events) throws(Errno) -> [FileDescriptor] in
            let n = try valueOrErrno("epoll_wait") { epoll_wait(descriptor.rawValue, events.baseAddress, Int32(max), timeoutMs) }
            return (0..<Int(n)).map { FileDescriptor(rawValue: events[$0].data.fd) }
        }
    }

    public func close() { descriptor.close() }
}

/// An eventfd counter: one thread signals, another's epoll sees it readable until it is reset.
public struct EventCounter: Sendable {
    public let descriptor: FileDescriptor

    /// Non-blocking, close-on-exec. Wraps eventfd(2).
    public init() throws(Errno) {
        descriptor = FileDescriptor(rawValue: try valueOrErrno("eventfd") { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) })
    }

    /// Adds one (the descriptor becomes readable). Never blocks: a counter at its maximum is
    /// readable already. Wraps write(2).
    public func signal() {
        var one: UInt64 = 1
        _ = retryingOnInterrupt { write(descriptor.rawValue, &one, 8) }
    }

    /// Resets the counter (the descriptor is no longer readable). Wraps read(2).
    public func reset() {
        var count: UInt64 = 0
        _ = retryingOnInterrupt { read(descriptor.rawValue, &count, 8) }
    }

    public func close() { descriptor.close() }
}
