#if canImport(Glibc)
import Glibc
#endif

/// State behind a pthread mutex, for what `Synchronization.Mutex` cannot hold: non-Sendable
/// references that one thread at a time uses (a worker's journal connection, a notification
/// socket). `Mutex` demands its contents stay disconnected from the caller (`sending`), which such
/// state, handed to closures that run under the lock, is not. Everything else uses `Mutex`.
public final class Locked<State>: @unchecked Sendable {  // unchecked: `state` is only touched under `mutex`
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var state: State

    public init(_ initial: State) {
        state = initial
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the state, under the mutex (not reentrant: `body` must not lock it again).
    /// Wraps pthread_mutex_lock(3).
    public func withLock<T, E: Error>(_ body: (inout State) throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&state)
    }
}
