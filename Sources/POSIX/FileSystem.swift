#if canImport(Glibc)
import Glibc
#endif

/// Path operations over Glibc (the product binary links no Foundation: hook startup time).
public enum FileSystem {
    /// Whether anything exists at `path`. Wraps `lstat(2)` (a dangling symlink exists) or, with
    /// `followingSymlinks`, `stat(2)`.
    public static func exists(_ path: String, followingSymlinks: Bool = false) -> Bool {
        var st = stat()
        return (followingSymlinks ? stat(path, &st) : lstat(path, &st)) == 0
    }

    /// Whether `path` is a directory (following symlinks). Wraps `stat(2)`.
    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// What kind of file `path` is, its permission bits and modification time, not following a
    /// final symlink; nil when there is nothing there (ENOENT, ENOTDIR); other failures throw.
    /// Wraps lstat(2).
    public static func linkStatus(_ path: String) throws(Errno) -> LinkStatus? {
        var st = stat()
        do { _ = try valueOrErrno("lstat") { lstat(path, &st) } } catch where error.isNotFound { return nil }
        let kind: FileKind = switch st.st_mode & S_IFMT {
        case S_IFREG: .regular
        case S_IFDIR: .directory
        case S_IFLNK: .symlink
        default: .other
        }
        return LinkStatus(kind: kind, permissions: UInt32(st.st_mode & 0o7777), modifiedSeconds: Int64(st.st_mtim.tv_sec))
    }

    /// The permission bits of the file at `path`, following symlinks; nil when there is none.
    /// Wraps stat(2).
    public static func permissions(_ path: String) -> UInt32? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return UInt32(st.st_mode & 0o7777)
    }

    /// Whether the calling process may execute `path`. Wraps access(2) with X_OK.
    public static func isExecutable(_ path: String) -> Bool { access(path, X_OK) == 0 }

    /// Whether the calling process may read `path` (following symlinks); throws why not.
    /// Wraps access(2) with R_OK.
    public static func checkReadable(_ path: String) throws(Errno) {
        _ = try valueOrErrno("access") { access(path, R_OK) }
    }

    /// Renames `from` to `to` (replacing it). Wraps rename(2).
    public static func rename(_ from: String, to: String) throws(Errno) {
        _ = try valueOrErrno("rename") { Glibc.rename(from, to) }
    }

    /// Removes the file at `path`, throwing why it could not. Wraps unlink(2).
    public static func removeFile(_ path: String) throws(Errno) {
        _ = try valueOrErrno("unlink") { unlink(path) }
    }

    /// Removes the directory at `path` if it is empty; false otherwise. Wraps rmdir(2).
    @discardableResult
    public static func removeEmptyDirectory(_ path: String) -> Bool { rmdir(path) == 0 }

    /// Creates a symbolic link at `path` pointing to `target`. Wraps symlink(2).
    public static func makeSymlink(_ path: String, to target: String) throws(Errno) {
        _ = try valueOrErrno("symlink") { symlink(target, path) }
    }

    /// (device, inode) of the file at `path`, following symlinks; nil when there is none.
    public static func identity(_ path: String) -> FileIdentity? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileIdentity(st)
    }

    /// Identity, size and modification time of `path`; nil when there is none. Wraps `stat(2)`.
    public static func stamp(_ path: String) -> FileStamp? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return FileStamp(identity: FileIdentity(st), size: Int64(st.st_size),
                         modifiedSeconds: Int64(st.st_mtim.tv_sec), modifiedNanoseconds: Int64(st.st_mtim.tv_nsec))
    }

    /// `mkdir -p`: creates `path` and missing parents with `mode`. An existing non-directory in the
    /// way is ENOTDIR. Wraps `mkdir(2)`.
    public static func makeDirectories(_ path: String, mode: UInt32) throws(Errno) {
        if path.isEmpty { return }
        var st = stat()
        if stat(path, &st) == 0 {
            if st.st_mode & S_IFMT != S_IFDIR { throw Errno(ENOTDIR, "mkdir") }
            return
        }
        let parent = dirname(path)
        if parent != path { try makeDirectories(parent, mode: mode) }
        if mkdir(path, mode) != 0 && errno != EEXIST { throw Errno.current("mkdir") }
    }

    /// The whole file, or nil when it does not exist. Throws `Errno(EFBIG, "read")` past `limit`.
    public static func readFile(_ path: String, limit: Int = 16 << 20) throws(Errno) -> [UInt8]? {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, O_RDONLY) } catch where error.isNotFound { return nil }
        defer { fd.close() }
        return try fd.readAll(limit: limit)
    }

    /// Writes `bytes` to `path` atomically (temporary file in the same directory, then rename) with `mode`.
    public static func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: UInt32) throws(Errno) {
        // The temporary file is created, never opened: O_EXCL|O_NOFOLLOW fail on anything already
        // at that name (a symlink planted in a directory someone else can write, dangling or not),
        // and a fresh name is tried instead. Nothing is ever written through a link.
        var attempt = 0
        var ts = timespec()
        while true {
            clock_gettime(CLOCK_REALTIME, &ts)
            let tmp = path + ".tmp.\(getpid()).\(ts.tv_nsec).\(attempt)"
            let fd: FileDescriptor
            do { fd = try FileDescriptor.open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: mode & 0o600) } catch where error.code == EEXIST && attempt < 8 {
                attempt += 1
                continue
            }
            do {
                try fd.writeAll(bytes)
                _ = try valueOrErrno("fchmod") { fchmod(fd.rawValue, mode) }
                fd.close()
                _ = try valueOrErrno("rename") { Glibc.rename(tmp, path) }
                return
            } catch {
                fd.close()
                unlink(tmp)
                throw error
            }
        }
    }

    /// Removes the file (or socket, or symlink) at `path`; false when there was none or it could
    /// not be removed. Wraps unlink(2).
    @discardableResult
    public static func remove(_ path: String) -> Bool { unlink(path) == 0 }

    /// The target of the symlink at `path`; nil when it is not one. Wraps `readlink(2)`.
    public static func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        if n < 0 { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Names in directory `path` (without `.` and `..`), sorted; [] when it cannot be read.
    public static func listDirectory(_ path: String) -> [String] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out.sorted()
    }

    public static func dirname(_ path: String) -> String {
        guard let i = path.lastIndex(of: "/") else { return "." }
        if i == path.startIndex { return "/" }
        return String(path[..<i])
    }

    public static func basename(_ path: String) -> String {
        guard let i = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: i)...])
    }
}

/// What kind of file: `FileSystem.linkStatus`.
public enum FileKind: Sendable, Equatable {
    case regular, directory, symlink, other
}

/// What `FileSystem.linkStatus` found (the link itself for a symlink).
public struct LinkStatus: Sendable, Equatable {
    public var kind: FileKind
    /// The permission bits (`st_mode & 0o7777`).
    public var permissions: UInt32
    public var modifiedSeconds: Int64
}

/// Processes by id.
public enum Process {
    /// Whether a process `pid` exists (one of another user's counts: EPERM). Wraps kill(2) with
    /// signal 0.
    public static func exists(_ pid: Int32) -> Bool { kill(pid, 0) == 0 || errno == EPERM }

    /// Sends `signal` to process `pid`; false when it could not be sent. Wraps kill(2).
    public static func signal(_ pid: Int32, _ signal: Int32) -> Bool { kill(pid, signal) == 0 }
}

/// The process environment.
public enum Environment {
    public static func get(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        return String(cString: v)
    }
}
