#if canImport(Glibc)
import Glibc
#endif

/// An open file descriptor: the few operations virtport needs, each retrying on EINTR and throwing
/// `Errno`. A value, not an owner: whoever opened it closes it (`close()`).
public struct FileDescriptor: Sendable, Equatable {
    public let rawValue: Int32

    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let standardInput = FileDescriptor(rawValue: 0)
    public static let standardOutput = FileDescriptor(rawValue: 1)
    public static let standardError = FileDescriptor(rawValue: 2)

    /// Wraps `open(2)`; `O_CLOEXEC` is always added.
    public static func open(_ path: String, _ flags: Int32, mode: UInt32 = 0) throws(Errno) -> FileDescriptor {
        let fd = try valueOrErrno("open") { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(rawValue: fd)
    }

    /// A pipe, both ends close-on-exec: (read end, write end). Wraps pipe(2) (Glibc's module
    /// does not export pipe2).
    public static func pipe() throws(Errno) -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [0, 0]
        _ = try valueOrErrno("pipe") { Glibc.pipe(&fds) }
        let ends = (read: FileDescriptor(rawValue: fds[0]), write: FileDescriptor(rawValue: fds[1]))
        ends.read.setCloseOnExec()
        ends.write.setCloseOnExec()
        return ends
    }

    /// Wraps `close(2)`. EINTR is not retried: on Linux the descriptor is gone either way.
    public func close() { _ = Glibc.close(rawValue) }

    /// Everything up to end of file. Throws `Errno(EFBIG, "read")` once more than `limit` bytes arrived.
    /// Wraps `read(2)`.
    public func readAll(limit: Int) throws(Errno) -> [UInt8] {
        var out: [UInt8] = []
        // Not zero-filled: a hook reads three small files, and 64 KiB of memset each was measurable.
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
        defer { chunk.deallocate() }
        while true {
            let n = try valueOrErrno("read") { Glibc.read(rawValue, chunk.baseAddress, chunk.count) }
            if n == 0 { return out }
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
            if out.count > limit { throw Errno(EFBIG, "read") }
        }
    }

    /// Reads at most `buffer.count` bytes into `buffer` (not zero-filled first: the caller reuses
    /// it); returns how many (0 at end of file). Wraps `read(2)`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try valueOrErrno("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Reads at most `count` bytes into a new array (fewer at end of file or for a socket).
    /// Wraps `read(2)`.
    public func read(upTo count: Int) throws(Errno) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let n = out.withUnsafeMutableBytes { buf in retryingOnInterrupt { Glibc.read(rawValue, buf.baseAddress, buf.count) } }
        if n < 0 { throw Errno.current("read") }
        out.removeSubrange(n...)
        return out
    }

    /// Writes every byte (a short write continues where it stopped). Wraps `write(2)`, or `send(2)`
    /// with MSG_NOSIGNAL when `socket` (a closed peer is EPIPE, not SIGPIPE).
    public func writeAll(_ bytes: [UInt8], socket: Bool = false) throws(Errno) {
        let function = socket ? "send" : "write"
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { buf in
                retryingOnInterrupt { () -> Int in
                    socket ? Glibc.send(rawValue, buf.baseAddress! + off, buf.count - off, Int32(MSG_NOSIGNAL))
                        : Glibc.write(rawValue, buf.baseAddress! + off, buf.count - off)
                }
            }
            if n < 0 { throw Errno.current(function) }
            if n == 0 { throw Errno(EIO, function) }
            off += n
        }
    }

    /// Waits until the descriptor is readable (or hung up). Returns false when `timeoutMs` passed
    /// first (-1: no timeout). A signal restarts the wait with the full timeout. Wraps `poll(2)`.
    public func waitReadable(timeoutMs: Int32) throws(Errno) -> Bool {
        var p = pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)
        return try valueOrErrno("poll") { poll(&p, 1, timeoutMs) } > 0
    }

    /// Sets the file's permission bits. Wraps fchmod(2).
    public func setPermissions(_ mode: UInt32) throws(Errno) {
        _ = try valueOrErrno("fchmod") { fchmod(rawValue, mode) }
    }

    /// `flock(2)` modes.
    public enum LockMode: Sendable { case shared, exclusive }

    /// Waits for the lock. Wraps `flock(2)`.
    public func lock(_ mode: LockMode) throws(Errno) {
        _ = try valueOrErrno("flock") { flock(rawValue, mode == .shared ? LOCK_SH : LOCK_EX) }
    }

    /// Releases a `flock(2)` lock (never fails for a descriptor that is open).
    public func unlock() { _ = retryingOnInterrupt { flock(rawValue, LOCK_UN) } }

    /// Sets `FD_CLOEXEC` (descriptors that the kernel handed over without it, e.g. from accept).
    public func setCloseOnExec() { _ = fcntl(rawValue, F_SETFD, FD_CLOEXEC) }

    /// Sets or clears `O_NONBLOCK`.
    public func setNonBlocking(_ on: Bool) {
        let flags = fcntl(rawValue, F_GETFL)
        _ = fcntl(rawValue, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK)
    }

}

/// Which file a path or descriptor is: (device, inode). A file replaced under the same name (a new
/// journal, a rewritten config) has another identity.
public struct FileIdentity: Equatable, Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64

    public init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}

/// A file's identity plus what changes when it is rewritten in place: a config file that was edited.
public struct FileStamp: Equatable, Sendable {
    public var identity: FileIdentity
    public var size: Int64
    public var modifiedSeconds: Int64
    public var modifiedNanoseconds: Int64
}
