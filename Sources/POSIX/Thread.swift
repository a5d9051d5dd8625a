#if canImport(Glibc)
import Glibc
#endif

/// Threads of the agent's own (pthreads): started detached, told apart, put to sleep.
public enum Thread {
    /// Which thread: comparable across threads (`pthread_t`).
    public struct ID: Sendable, Equatable {
        fileprivate let raw: pthread_t
        public static func == (a: ID, b: ID) -> Bool { pthread_equal(a.raw, b.raw) != 0 }
    }

    /// The calling thread. Wraps pthread_self(3).
    public static var current: ID { ID(raw: pthread_self()) }

    /// Starts `body` on a new detached thread. Wraps pthread_create(3) (which returns its error
    /// instead of setting errno) and pthread_detach(3).
    public static func detach(_ body: @escaping @Sendable () -> Void) throws(Errno) {
        final class Start: Sendable {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        var thread = pthread_t()
        let start = Unmanaged.passRetained(Start(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, start)
        if rc != 0 {
            Unmanaged<Start>.fromOpaque(start).release()
            throw Errno(rc, "pthread_create")
        }
        pthread_detach(thread)
    }

    /// Sleeps `millis` on CLOCK_MONOTONIC, the whole time even when a signal interrupts it.
    /// Wraps clock_nanosleep(2) (which returns its error instead of setting errno).
    public static func sleep(millis: Int64) {
        let deadline = MonotonicClock.micros() + millis * 1000
        var ts = timespec(tv_sec: Int(deadline / 1_000_000), tv_nsec: Int(deadline % 1_000_000) * 1000)
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
    }
}
