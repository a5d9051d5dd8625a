#if canImport(Glibc)
import Glibc
#endif

/// Starts `body` on a detached pthread. Returns false when the thread could not be created.
func spawnDetached(_ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    let rc = pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    if rc != 0 {
        Unmanaged<Box>.fromOpaque(box).release()
        return false
    }
    pthread_detach(thread)
    return true
}

/// A pthread mutex with a condition variable, on the heap (a pthread mutex must not move).
final class Monitor: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attr)
        pthread_condattr_destroy(&attr)
    }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Inside `locked`: waits for a `signal` or until `deadlineMillis` (CLOCK_MONOTONIC) passes.
    /// Returns false on timeout.
    func wait(untilMillis deadlineMillis: Int64) -> Bool {
        var ts = timespec(tv_sec: Int(deadlineMillis / 1000), tv_nsec: Int(deadlineMillis % 1000) * 1_000_000)
        return pthread_cond_timedwait(condition, mutex, &ts) == 0
    }

    /// Inside `locked`: wakes every waiter.
    func broadcast() { pthread_cond_broadcast(condition) }
}
