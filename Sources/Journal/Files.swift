#if canImport(Glibc)
import Glibc
#endif
import POSIX
import VirtPortCore

/// The database file and its directory, created with private permissions before SQLite opens them.
enum Files {
    /// `mkdir -p` for the parent of `path`; directories it creates get mode 0700.
    static func makeParent(of path: String) throws(VirtPortError) {
        let dir = FileSystem.dirname(path)
        if dir == "." || dir == "/" { return }
        do { try FileSystem.makeDirectories(dir, mode: 0o700) } catch where error.code == ENOTDIR {
            throw .operational("\(dir) exists and is not a directory")
        } catch {
            throw .operational("cannot create directory \(dir)", cause: error)
        }
    }

    /// Creates `path` with mode 0600 if it does not exist (whatever the umask); leaves an existing
    /// file alone. SQLite gives its -wal and -shm files the main file's mode.
    static func createPrivate(_ path: String) throws(VirtPortError) {
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, O_RDWR | O_CREAT | O_EXCL, mode: 0o600) } catch where error.code == EEXIST {
            return
        } catch {
            throw .operational("cannot create database \(path)", cause: error)
        }
        defer { fd.close() }
        if fchmod(fd.rawValue, 0o600) != 0 { throw .operational("cannot chmod \(path)", cause: Errno.current("fchmod")) }
    }

    /// For read-only opens: "does not exist" and "permission denied" are different stories.
    static func checkReadable(_ path: String) throws(VirtPortError) {
        if access(path, R_OK) == 0 { return }
        let e = Errno.current("access")
        if e.isNotFound { throw .operational("database \(path) does not exist") }
        throw .operational("cannot read database \(path)", cause: e)
    }

    static func exists(_ path: String) -> Bool { FileSystem.exists(path, followingSymlinks: true) }

    /// Renames `path` and its -wal/-shm companions to `path.corrupt-<suffix>…`; returns the new name.
    static func moveAside(_ path: String, suffix: String) throws(VirtPortError) -> String {
        let target = "\(path).corrupt-\(suffix)"
        // Companions first: a new database at `path` must never pick up the old -wal.
        for ext in ["-wal", "-shm", ""] {
            if rename(path + ext, target + ext) != 0 && errno != ENOENT {
                throw .operational("cannot move \(path + ext) aside", cause: Errno.current("rename"))
            }
        }
        return target
    }
}
