#if canImport(Glibc)
import Glibc
#endif

/// State shared between threads, reachable only under a pthread mutex, with a condition variable
/// (CLOCK_MONOTONIC deadlines) to wait for it to change: what `Synchronization.Mutex` is plus
/// waiting. For state nobody waits on, use `Mutex`.
///
///     let queue = ConditionLock<[Job]>([])
///     queue.withLock { $0.append(job) }; queue.broadcast()
///     let job = queue.withLock(waitingUntil: { !$0.isEmpty }, deadline: nil) { q, _ in q.removeFirst() }
public final class ConditionLock<State>: @unchecked Sendable {  // unchecked: `state` is only touched under `mutex`
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var state: State

    public init(_ initial: State) {
        state = initial
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` with the state, under the mutex. Wraps pthread_mutex_lock(3).
    public func withLock<T, E: Error>(_ body: (inout State) throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&state)
    }

    /// Waits (releasing the mutex meanwhile) until `ready` holds for the state or `deadline`
    /// (CLOCK_MONOTONIC ms; nil: none) passed, then runs `body` under the mutex with whether it
    /// holds. Wraps pthread_cond_timedwait(3) / pthread_cond_wait(3).
    public func withLock<T, E: Error>(waitingUntil ready: (inout State) -> Bool, deadline: Int64?,
                                      _ body: (inout State, _ ready: Bool) throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        var ok = ready(&state)
        while !ok {
            if let deadline {
                if MonotonicClock.millis() >= deadline { break }
                var ts = timespec(tv_sec: Int(deadline / 1000), tv_nsec: Int(deadline % 1000) * 1_000_000)
                _ = pthread_cond_timedwait(condition, mutex, &ts)
            } else {
                pthread_cond_wait(condition, mutex)
            }
            ok = ready(&state)
        }
        return try body(&state, ok)
    }

    /// Wakes every thread waiting in `withLock(waitingUntil:)` (each rechecks its condition).
    /// Call after changing what they wait for. Wraps pthread_cond_broadcast(3).
    public func broadcast() { pthread_cond_broadcast(condition) }
}
