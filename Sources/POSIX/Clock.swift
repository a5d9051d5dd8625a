#if canImport(Glibc)
import Glibc
#endif

/// CLOCK_MONOTONIC (never jumps with the wall clock): deadlines, debounces and durations.
/// Wraps clock_gettime(2), which cannot fail for this clock.
public enum MonotonicClock {
    /// Now, in microseconds.
    public static func micros() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
    }

    /// Now, in milliseconds.
    public static func millis() -> Int64 { micros() / 1000 }
}

/// CLOCK_THREAD_CPUTIME_ID: the calling thread's CPU time, user and system; what a system call
/// cost the caller, without the time it spent preempted. Wraps clock_gettime(2).
public enum ThreadCPUClock {
    /// The thread's CPU time so far, in microseconds.
    public static func micros() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
    }
}
