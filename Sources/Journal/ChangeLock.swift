#if canImport(Glibc)
import Glibc
#endif
public import VirtPortCore

/// Serialises "read the journal, then make the kernel match it" (a table rebuild, reconcile,
/// network `started`) against hooks that are between their journal intent and their kernel change.
///
/// A hook holds the lock shared from before `beginApply`/`beginRemoveAll` until its netlink batch
/// is done, so hooks of different domains still run side by side. Whoever rebuilds the kernel state
/// from the journal holds it exclusively while it reads the rows and sends the batch: no hook can
/// then have an intent in the journal whose elements are not yet in the kernel (which a rebuild
/// would leave out) or an element in the kernel that a rebuild read before its intent (which would
/// be deleted). `flock(2)` on `<database>.lock` (mode 0600); the kernel drops it when the process
/// exits, however it exits.
public final class ChangeLock {
    private let fd: Int32
    public let path: String

    /// Opens (creating, with the journal's directory) the lock file beside the journal; takes no
    /// lock yet.
    public init(databasePath: String) throws(VirtPortError) {
        path = databasePath + ".lock"
        try Files.makeParent(of: path)
        // O_NOFOLLOW: a link planted here (dangling or not) would have root create or lock its target.
        fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 {
            if errno == ELOOP {
                throw .operational("lock file \(path) is a symbolic link: refused (virtport never follows links for its journal; remove it)")
            }
            throw .operational("cannot open lock file \(path)", cause: Files.errnoText())
        }
    }

    deinit { close(fd) }

    /// Waits for the lock in shared mode (other hooks may hold it too).
    public func shared() throws(VirtPortError) { try take(LOCK_SH, "shared") }

    /// Waits for the lock alone; a holder of the shared lock is converted (flock releases the
    /// shared lock first, so two converting processes cannot deadlock).
    public func exclusive() throws(VirtPortError) { try take(LOCK_EX, "exclusive") }

    /// Releases the lock (a process that lives on after a change: the agent).
    public func unlock() {
        while flock(fd, LOCK_UN) != 0 && errno == EINTR {}
    }

    private func take(_ mode: Int32, _ name: String) throws(VirtPortError) {
        while flock(fd, mode) != 0 {
            if errno == EINTR { continue }
            throw .operational("cannot take the \(name) lock \(path)", cause: Files.errnoText())
        }
    }
}
