#if canImport(Glibc)
import Glibc
#endif
import POSIX
public import VirtPortCore

/// Serialises "read the journal, then make the kernel match it" (a table rebuild, reconcile,
/// network `started`) against hooks that are between their journal intent and their kernel change.
///
/// A hook holds the lock shared from before `beginApply`/`beginRemoveAll` until its change is
/// committed, so hooks of different domains still run side by side. Whoever rebuilds the kernel
/// state from the journal holds it exclusively while it reads the rows and sends the batch: no hook
/// can then have an intent in the journal whose elements are not yet in the kernel (which a rebuild
/// would leave out) or an element in the kernel that a rebuild read before its intent (which would
/// be deleted). `flock(2)` on `<database>.lock` (mode 0600); the kernel drops it when the process
/// exits, however it exits.
public final class ChangeLock {
    private let fd: FileDescriptor
    public let path: String

    /// Opens (creating, with the journal's directory) the lock file beside the journal; takes no
    /// lock yet.
    public init(databasePath: String) throws(VirtPortError) {
        path = databasePath + ".lock"
        try Files.makeParent(of: path)
        // O_NOFOLLOW: a link planted here (dangling or not) would have root create or lock its target.
        do { fd = try FileDescriptor.open(path, O_RDWR | O_CREAT | O_NOFOLLOW, mode: 0o600) } catch where error.code == ELOOP {
            throw .operational("lock file \(path) is a symbolic link: refused (virtport never follows links for its journal; remove it)")
        } catch {
            throw .operational("cannot open lock file \(path)", cause: error)
        }
    }

    deinit { fd.close() }

    /// Runs `body` holding the lock shared (other hooks may hold it too); released when it returns.
    /// `body` may convert it to exclusive (`convertToExclusive`) for a rebuild.
    public func withShared<T>(_ body: () throws(VirtPortError) -> T) throws(VirtPortError) -> T {
        try take(.shared)
        defer { fd.unlock() }
        return try body()
    }

    /// Takes the lock shared and keeps it until `release()`: for a change whose deferred work
    /// (`Resources.later`) runs after its caller was answered, under the same lock.
    public func takeShared() throws(VirtPortError) { try take(.shared) }

    /// Releases what `takeShared` (or a conversion) took.
    public func release() { fd.unlock() }

    /// Runs `body` holding the lock alone; released when it returns.
    public func withExclusive<T>(_ body: () throws(VirtPortError) -> T) throws(VirtPortError) -> T {
        try take(.exclusive)
        defer { fd.unlock() }
        return try body()
    }

    /// Inside `withShared`: waits for the lock alone. flock releases the shared lock first, so two
    /// converting processes cannot deadlock.
    public func convertToExclusive() throws(VirtPortError) { try take(.exclusive) }

    /// How many times the lock was taken (shared, exclusive or converted): unit tests check that a
    /// domain's change takes it once.
    public private(set) var acquisitions = 0

    private func take(_ mode: FileDescriptor.LockMode) throws(VirtPortError) {
        acquisitions += 1
        do { try fd.lock(mode) } catch {
            throw .operational("cannot take the \(mode == .shared ? "shared" : "exclusive") lock \(path)", cause: error)
        }
    }
}
