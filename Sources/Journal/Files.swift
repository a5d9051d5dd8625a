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
        try checkNoLinkAbove(path)
        if dir == "." || dir == "/" { return }
        do { try FileSystem.makeDirectories(dir, mode: 0o700) } catch where error.code == ENOTDIR {
            throw .operational("\(dir) exists and is not a directory")
        } catch {
            throw .operational("cannot create directory \(dir)", cause: error)
        }
    }

    /// Creates `path` with mode 0600 if it does not exist (whatever the umask). SQLite gives its
    /// -wal and -shm files the main file's mode. Then `checkPrivate`.
    static func createPrivate(_ path: String) throws(VirtPortError) {
        // O_EXCL: never through a symbolic link, dangling or not.
        let created: FileDescriptor?
        do { created = try FileDescriptor.open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600) } catch where error.code == EEXIST {
            created = nil  // there already: checked below
        } catch {
            throw .operational("cannot create database \(path)", cause: error)
        }
        if let fd = created {
            defer { fd.close() }
            do { try fd.setPermissions(0o600) } catch { throw .operational("cannot chmod \(path)", cause: error) }
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
            let status: LinkStatus?
            do { status = try FileSystem.linkStatus(file) } catch {
                throw .operational("cannot stat \(file)", cause: error)
            }
            guard let status else { continue }
            if status.kind == .symlink {
                throw .operational("journal file \(file) is a symbolic link: refused (virtport never follows links for its journal; remove it)")
            }
            if status.kind != .regular {
                throw .operational("journal file \(file) is not a regular file: refused")
            }
            if fix && status.permissions & 0o077 != 0 {
                let fd: FileDescriptor
                do { fd = try FileDescriptor.open(file, O_RDONLY | O_NOFOLLOW) } catch {
                    throw .operational("cannot open \(file)", cause: error)
                }
                defer { fd.close() }
                do { try fd.setPermissions(0o600) } catch { throw .operational("cannot chmod \(file)", cause: error) }
            }
        }
    }

    /// The directories on the way to the journal must be real ones: SQLite opens it with
    /// SQLITE_OPEN_NOFOLLOW, which refuses a link anywhere in the path, and a link there would let
    /// whoever can replace it choose where root's journal lives. Refused (not resolved) before
    /// anything is created: one line naming the link and what to do.
    static func checkNoLinkAbove(_ path: String) throws(VirtPortError) {
        guard path.hasPrefix("/") else { return }
        var prefix = ""
        for component in FileSystem.dirname(path).split(separator: "/") {
            prefix += "/" + component
            // Not there yet (or not to be looked at): created as real directories.
            guard let status = try? FileSystem.linkStatus(prefix) else { return }
            if status.kind == .symlink {
                let target = FileSystem.readLink(prefix) ?? "?"
                throw .operational("journal directory \(prefix) is a symbolic link (to \(target)): refused, nothing "
                    + "created; set `database` to a path without links (e.g. the link's target)")
            }
        }
    }

    /// For read-only opens: "does not exist" and "permission denied" are different stories.
    static func checkReadable(_ path: String) throws(VirtPortError) {
        try checkNoLinkAbove(path)
        try checkPrivate(path, fix: false)
        do { try FileSystem.checkReadable(path) } catch where error.isNotFound {
            throw .operational("database \(path) does not exist")
        } catch {
            throw .operational("cannot read database \(path)", cause: error)
        }
    }

    /// Whether something is at `path` (a symbolic link too, dangling or not: opening then
    /// refuses it with a message rather than acting as if there were no journal).
    static func exists(_ path: String) -> Bool { FileSystem.exists(path) }

    /// Renames `path` and its -wal/-shm companions to `path.corrupt-<suffix>…`; returns the new name.
    static func moveAside(_ path: String, suffix: String) throws(VirtPortError) -> String {
        let target = "\(path).corrupt-\(suffix)"
        // Companions first: a new database at `path` must never pick up the old -wal.
        for ext in ["-wal", "-shm", ""] {
            do { try FileSystem.rename(path + ext, to: target + ext) } catch where error.code == ENOENT {
                continue
            } catch {
                throw .operational("cannot move \(path + ext) aside", cause: error)
            }
        }
        return target
    }
}
