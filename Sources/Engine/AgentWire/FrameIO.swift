#if canImport(Glibc)
import Glibc
#endif
public import POSIX

/// One length-prefixed frame over a stream socket, each way, with a deadline.
public enum FrameIO {
    /// Sends `payload` behind its u32 length; false when the peer is gone.
    public static func send(_ fd: FileDescriptor, _ payload: [UInt8]) -> Bool {
        var w = AgentFrame.Writer([])
        w.bytes(payload)
        do { try fd.writeAll(w.out, socket: true) } catch { return false }
        return true
    }

    /// Reads one frame; nil on EOF, error, oversize, or when the whole frame has not arrived
    /// `timeoutMs` after the call (a deadline for the frame, not per byte: a peer that drips a
    /// byte at a time cannot hold the reader longer).
    public static func receive(_ fd: FileDescriptor, timeoutMs: Int32) -> [UInt8]? {
        let deadline = MonotonicClock.millis() + Int64(timeoutMs)
        guard let head = exactly(fd, 4, deadline: deadline) else { return nil }
        let n = Int(UInt32(head[0]) | UInt32(head[1]) << 8 | UInt32(head[2]) << 16 | UInt32(head[3]) << 24)
        guard n <= AgentFrame.maxFrame else { return nil }
        return exactly(fd, n, deadline: deadline)
    }

    private static func exactly(_ fd: FileDescriptor, _ count: Int, deadline: Int64) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            let left = deadline - MonotonicClock.millis()
            guard left > 0, (try? fd.waitReadable(timeoutMs: Int32(clamping: left))) == true,
                  let chunk = try? fd.read(upTo: min(count - out.count, 1 << 20)), !chunk.isEmpty
            else { return nil }
            out += chunk
        }
        return out
    }

}

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

    /// The peer's (pid, uid) of a connected unix socket. Wraps getsockopt(SO_PEERCRED).
    public static func peer(_ fd: FileDescriptor) -> (pid: Int32, uid: UInt32)? {
        // struct ucred (pid, uid, gid): Glibc exports it only under _GNU_SOURCE.
        var cred: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
        guard getsockopt(fd.rawValue, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else { return nil }
        return (cred.pid, cred.uid)
    }
}
