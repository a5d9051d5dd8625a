#if canImport(Glibc)
import Glibc
#endif
import CLinux

/// `AF_UNIX` stream sockets by path.
public enum UnixSocket {
    static func address(_ path: String) -> sockaddr_un? {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            buf.copyBytes(from: bytes)
            buf[bytes.count] = 0
        }
        return addr
    }

    /// A connected socket, or nil (no such socket, nobody listening, path too long). With
    /// `nonBlocking`, a listener whose backlog is full answers at once (EAGAIN) instead of making
    /// the caller wait for room.
    public static func connect(to path: String, nonBlocking: Bool = false) -> FileDescriptor? {
        guard var addr = address(path) else { return nil }
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        let fd = socket(AF_UNIX, type, 0)
        if fd < 0 { return nil }
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                retryingOnInterrupt { Glibc.connect(fd, sa, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        if rc != 0 {
            close(fd)
            return nil
        }
        let connected = FileDescriptor(rawValue: fd)
        if nonBlocking { connected.setNonBlocking(false) }
        return connected
    }

    /// Sends `bytes` as one datagram to the AF_UNIX datagram socket at `path` (the system log),
    /// from a socket opened for it and closed after; false when it could not be sent (no such
    /// socket, nobody reading, path too long). Never raises SIGPIPE. Wraps socket(2), sendto(2).
    @discardableResult
    public static func sendDatagram(_ bytes: [UInt8], to path: String) -> Bool {
        guard var addr = address(path) else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let sent = bytes.withUnsafeBytes { buf in
            withUnsafePointer(to: &addr) { a in
                a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    retryingOnInterrupt {
                        sendto(fd, buf.baseAddress, buf.count, Int32(MSG_NOSIGNAL), sa, socklen_t(MemoryLayout<sockaddr_un>.size))
                    }
                }
            }
        }
        return sent == bytes.count
    }

    /// Binds and listens on `path` with mode 0600 (the socket file). Wraps socket(2), bind(2), listen(2).
    public static func listen(on path: String, backlog: Int32) throws(Errno) -> FileDescriptor {
        guard var addr = address(path) else { throw Errno(ENAMETOOLONG, "bind") }
        let fd = FileDescriptor(rawValue: try valueOrErrno("socket") {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        let old = umask(0o177)  // the socket file: 0600
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(old)
        if rc != 0 {
            let e = Errno.current("bind")
            fd.close()
            throw e
        }
        if Glibc.listen(fd.rawValue, backlog) != 0 {
            let e = Errno.current("listen")
            fd.close()
            throw e
        }
        return fd
    }

    /// What one `accept` came to, sorted by what the caller should do next.
    public enum Accepted: Sendable {
        /// A connection (close-on-exec set).
        case connection(FileDescriptor)
        /// Nothing to serve, nothing wrong: interrupted, or the peer reset the connection before
        /// it was accepted (ECONNABORTED, EPROTO), or a non-blocking listener had none (EAGAIN).
        /// Accept again.
        case again
        /// The process or the system is out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
        /// ENOMEM): the connection stays queued, and accepting again at once would fail again at
        /// once. Back off before the next try.
        case exhausted(Errno)
        /// Anything else (a listener that is not one, EBADF, EINVAL): back off, say so.
        case failed(Errno)
    }

    /// Takes the next connection queued on `listener`. Wraps accept(2) (EINTR retried).
    public static func accept(_ listener: FileDescriptor) -> Accepted {
        let raw = retryingOnInterrupt { Glibc.accept(listener.rawValue, nil, nil) }
        if raw >= 0 {
            let client = FileDescriptor(rawValue: raw)
            client.setCloseOnExec()
            return .connection(client)
        }
        let e = Errno.current("accept")
        switch e.code {
        case ECONNABORTED, EPROTO, EAGAIN, EWOULDBLOCK, EINTR: return .again
        case EMFILE, ENFILE, ENOBUFS, ENOMEM: return .exhausted(e)
        default: return .failed(e)
        }
    }

    /// The peer's (pid, uid) of a connected unix socket. Wraps getsockopt(SO_PEERCRED).
    public static func peer(_ fd: FileDescriptor) -> (pid: Int32, uid: UInt32)? {
        // struct ucred (pid, uid, gid): Glibc exports it only under _GNU_SOURCE.
        var cred: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
        guard getsockopt(fd.rawValue, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else { return nil }
        return (cred.pid, cred.uid)
    }
}
