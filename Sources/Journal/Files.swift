#if canImport(Glibc)
import Glibc
#endif
import VirtPortCore

/// The database file and its directory, created with private permissions before SQLite opens them.
enum Files {
    static func errnoText(_ e: Int32 = errno) -> String { String(cString: strerror(e)) }

    /// `mkdir -p` for the parent of `path`; directories it creates get mode 0700.
    static func makeParent(of path: String) throws(VirtPortError) {
        guard let slash = path.lastIndex(of: "/") else { return }
        let dir = String(path[..<slash])
        if dir.isEmpty { return }
        try makeDirectory(dir)
    }

    private static func makeDirectory(_ dir: String) throws(VirtPortError) {
        var st = stat()
        if stat(dir, &st) == 0 {
            if st.st_mode & S_IFMT != S_IFDIR { throw .operational("\(dir) exists and is not a directory") }
            return
        }
        if let slash = dir.lastIndex(of: "/"), slash != dir.startIndex {
            try makeDirectory(String(dir[..<slash]))
        }
        if mkdir(dir, 0o700) != 0 && errno != EEXIST {
            throw .operational("cannot create directory \(dir)", cause: errnoText())
        }
    }

    /// Creates `path` with mode 0600 if it does not exist (whatever the umask). SQLite gives its
    /// -wal and -shm files the main file's mode. Then `checkPrivate`.
    static func createPrivate(_ path: String) throws(VirtPortError) {
        while true {
            // O_EXCL: never through a symbolic link, dangling or not.
            let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd >= 0 {
                defer { close(fd) }
                if fchmod(fd, 0o600) != 0 { throw .operational("cannot chmod \(path)", cause: errnoText()) }
                break
            }
            switch errno {
            case EINTR: continue
            case EEXIST: break
            default: throw .operational("cannot create database \(path)", cause: errnoText())
            }
            break
        }
        try checkPrivate(path, fix: true)
    }

    /// The journal's files (`path`, `-wal`, `-shm`) that exist must be regular files, not
    /// symbolic links: someone who could plant a link there would have virtport's SQLite write
    /// (as root) wherever it points, or read a file of their choosing as the journal. With `fix`,
    /// a file readable or writable by others is set to 0600 (SQLite copies the main file's mode
    /// to -wal and -shm, so one loose file makes them all loose).
    static func checkPrivate(_ path: String, fix: Bool) throws(VirtPortError) {
        for file in [path, path + "-wal", path + "-shm"] {
            var st = stat()
            if lstat(file, &st) != 0 {
                if errno == ENOENT { continue }
                throw .operational("cannot stat \(file)", cause: errnoText())
            }
            if st.st_mode & S_IFMT == S_IFLNK {
                throw .operational("journal file \(file) is a symbolic link: refused (virtport never follows links for its journal; remove it)")
            }
            if st.st_mode & S_IFMT != S_IFREG {
                throw .operational("journal file \(file) is not a regular file: refused")
            }
            if fix && st.st_mode & 0o077 != 0 {
                let fd = open(file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                if fd < 0 { throw .operational("cannot open \(file)", cause: errnoText()) }
                defer { close(fd) }
                if fchmod(fd, 0o600) != 0 { throw .operational("cannot chmod \(file)", cause: errnoText()) }
            }
        }
    }

    /// For read-only opens: "does not exist" and "permission denied" are different stories.
    static func checkReadable(_ path: String) throws(VirtPortError) {
        try checkPrivate(path, fix: false)
        if access(path, R_OK) == 0 { return }
        let e = errno
        if e == ENOENT || e == ENOTDIR { throw .operational("database \(path) does not exist") }
        throw .operational("cannot read database \(path)", cause: errnoText(e))
    }

    /// Whether something is at `path` (a symbolic link too, dangling or not: opening then
    /// refuses it with a message rather than acting as if there were no journal).
    static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// Renames `path` and its -wal/-shm companions to `path.corrupt-<suffix>…`; returns the new name.
    static func moveAside(_ path: String, suffix: String) throws(VirtPortError) -> String {
        let target = "\(path).corrupt-\(suffix)"
        // Companions first: a new database at `path` must never pick up the old -wal.
        for ext in ["-wal", "-shm", ""] {
            if rename(path + ext, target + ext) != 0 && errno != ENOENT {
                throw .operational("cannot move \(path + ext) aside", cause: errnoText())
            }
        }
        return target
    }
}
