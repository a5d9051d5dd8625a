#if canImport(Glibc)
import Glibc
#endif
import VirtPortCore

/// The database file and its directory, created with private permissions before SQLite opens them.
enum Files {
    static func errnoText(_ e: Int32 = errno) -> String { VirtPortError.errnoText(e) }

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

    /// Creates `path` with mode 0600 if it does not exist (whatever the umask); leaves an existing
    /// file alone. SQLite gives its -wal and -shm files the main file's mode.
    static func createPrivate(_ path: String) throws(VirtPortError) {
        while true {
            let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 {
                defer { close(fd) }
                if fchmod(fd, 0o600) != 0 { throw .operational("cannot chmod \(path)", cause: errnoText()) }
                return
            }
            switch errno {
            case EINTR: continue
            case EEXIST: return
            default: throw .operational("cannot create database \(path)", cause: errnoText())
            }
        }
    }

    /// For read-only opens: "does not exist" and "permission denied" are different stories.
    static func checkReadable(_ path: String) throws(VirtPortError) {
        if access(path, R_OK) == 0 { return }
        let e = errno
        if e == ENOENT || e == ENOTDIR { throw .operational("database \(path) does not exist") }
        throw .operational("cannot read database \(path)", cause: errnoText(e))
    }

    static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
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
