#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: the `errno` it set and the name of the C function, so that every error
/// past this layer is a value (never a bare Int32) and still says which call failed.
public struct Errno: Error, Sendable, Equatable, CustomStringConvertible {
    /// The `errno` value.
    public var code: Int32
    /// The C function that failed ("open", "flock", …).
    public var function: String

    public init(_ code: Int32, _ function: String) {
        self.code = code
        self.function = function
    }

    /// The calling thread's current `errno`, attributed to `function`.
    public static func current(_ function: String) -> Errno { Errno(errno, function) }

    /// `strerror(3)`'s text: what the messages built on this have always shown.
    public var description: String { Errno.text(code) }

    /// `strerror(code)`, plus "(run as root)" when a process that is not root was refused (EACCES,
    /// EPERM): the journal, the netlink socket and libvirt's hook directory are root's, and the
    /// bare "Permission denied" does not say which side has to change.
    public static func text(_ code: Int32) -> String {
        let text = strerror(code).map { String(cString: $0) } ?? "errno \(code)"
        return (code == EACCES || code == EPERM) && geteuid() != 0 ? text + " (run as root)" : text
    }

    public var isNotFound: Bool { code == ENOENT || code == ENOTDIR }
}

/// The one EINTR policy of virtport: every system call that can be interrupted by a signal is
/// restarted, here and nowhere else. `call` runs until it does not fail with EINTR; its result is
/// returned and `errno` is left as the last call set it. For calls whose `-1` the caller inspects
/// itself; `valueOrErrno` is the throwing form.
@inline(__always)
public func retryingOnInterrupt<T: SignedInteger>(_ call: () -> T) -> T {
    while true {
        let r = call()
        if r == -1 && errno == EINTR { continue }
        return r
    }
}

/// Calls `call` (a C function returning -1 and setting errno on failure), retrying on EINTR
/// (`retryingOnInterrupt`), and returns its result or throws the errno with the function's name
/// (swift-system's `valueOrErrno(retryOnInterrupt:)`).
@inline(__always)
public func valueOrErrno<T: SignedInteger>(_ function: String, _ call: () -> T) throws(Errno) -> T {
    let r = retryingOnInterrupt(call)
    if r == -1 { throw Errno.current(function) }
    return r
}
