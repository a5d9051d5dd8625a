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

/// Calls `call` until it does not fail with EINTR and returns its result; `errno` is left as the
/// last call set it. For calls whose failure the caller handles itself (a `-1` it inspects).
@inline(__always)
public func retryingOnInterrupt<T: SignedInteger>(_ call: () -> T) -> T {
    while true {
        let r = call()
        if r == -1 && errno == EINTR { continue }
        return r
    }
}

/// Calls `call` (a C function returning -1 and setting errno on failure), retrying on EINTR, and
/// returns its result or throws the errno with the function's name (swift-system's
/// `valueOrErrno(retryOnInterrupt:)`).
@inline(__always)
public func valueOrErrno<T: SignedInteger>(_ function: String, retryOnInterrupt: Bool = true,
                                           _ call: () -> T) throws(Errno) -> T {
    while true {
        let r = call()
        if r != -1 { return r }
        let e = errno
        if e == EINTR && retryOnInterrupt { continue }
        throw Errno(e, function)
    }
}
