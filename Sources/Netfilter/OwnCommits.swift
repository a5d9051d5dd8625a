#if canImport(Glibc)
import Glibc
#endif
import POSIX

/// Which nf_tables batches this process committed itself, as self-heal must tell them apart from
/// everyone else's: the kernel names a batch's committer in its NEWGEN notification by the
/// committing *thread's* id (`task_pid_nr(current)`: `getpid()` only for the main thread, never
/// for the agent's workers) and, in the message header, by the netlink port id of the socket that
/// sent it. Every NETLINK_NETFILTER socket this process opens registers its port id here.
public enum OwnCommits {
    nonisolated(unsafe) private static var ports: Set<UInt32> = []
    nonisolated(unsafe) private static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    static func register(port: UInt32) {
        pthread_mutex_lock(lock)
        ports.insert(port)
        pthread_mutex_unlock(lock)
    }

    static func unregister(port: UInt32) {
        pthread_mutex_lock(lock)
        ports.remove(port)
        pthread_mutex_unlock(lock)
    }

    /// Whether this process committed `batch`: one of its sockets (port id) or one of its threads
    /// (a task of /proc/self/task; a pid namespace of our own shows other ids there, the port id
    /// still matches).
    public static func committed(_ batch: NftablesMonitor.Batch) -> Bool {
        if batch.pid != 0 && (batch.pid == UInt32(getpid()) || FileSystem.exists("/proc/self/task/\(batch.pid)")) {
            return true
        }
        guard batch.portID != 0 else { return false }
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return ports.contains(batch.portID)
    }
}
