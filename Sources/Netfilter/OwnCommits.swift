#if canImport(Glibc)
import Glibc
#endif
import POSIX
import Synchronization

/// Which nf_tables batches this process committed itself, as self-heal must tell them apart from
/// everyone else's: the kernel names a batch's committer in its NEWGEN notification by the
/// committing *thread's* id (`task_pid_nr(current)`: `getpid()` only for the main thread, never
/// for the agent's workers) and, in the message header, by the netlink port id of the socket that
/// sent it. Every NETLINK_NETFILTER socket this process opens registers its port id here.
public enum OwnCommits {
    private static let ports = Mutex<Set<UInt32>>([])

    static func register(port: UInt32) {
        _ = ports.withLock { $0.insert(port) }
    }

    static func unregister(port: UInt32) {
        _ = ports.withLock { $0.remove(port) }
    }

    /// Whether this process committed `commit`: one of its sockets (port id) or one of its threads
    /// (a task of /proc/self/task; a pid namespace of our own shows other ids there, the port id
    /// still matches).
    public static func committed(_ commit: NftablesMonitor.Commit) -> Bool {
        if commit.pid != 0 && (commit.pid == UInt32(getpid()) || FileSystem.exists("/proc/self/task/\(commit.pid)")) {
            return true
        }
        guard commit.portID != 0 else { return false }
        return ports.withLock { $0.contains(commit.portID) }
    }
}
