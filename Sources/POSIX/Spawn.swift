#if canImport(Glibc)
import Glibc
#endif

/// Runs a helper program (never on the hook path): its stdout goes to our stderr, so a command's
/// own stdout stays what it prints.
public enum Spawn {
    public static func find(_ name: String, in dirs: [String]) -> String? {
        for d in dirs where access("\(d)/\(name)", X_OK) == 0 { return "\(d)/\(name)" }
        return nil
    }

    /// Runs argv and returns its stdout when it exits 0 (stderr discarded); nil otherwise.
    public static func capture(_ argv: [String], limit: Int = 4 << 20) -> String? {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return nil }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_addclose(&actions, fds[1])
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
        close(fds[1])
        defer { close(fds[0]) }
        guard rc == 0 else { return nil }
        let bytes = (try? FileDescriptor(rawValue: fds[0]).readAll(limit: limit)) ?? []
        var status: Int32 = 0
        if retryingOnInterrupt({ waitpid(pid, &status, 0) }) < 0 { return nil }
        return status == 0 ? String(decoding: bytes, as: UTF8.self) : nil
    }

    public static func run(_ argv: [String], quiet: Bool = false) -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if quiet {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 2, 1)
        }
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ) == 0 else { return 127 }
        var status: Int32 = 0
        if retryingOnInterrupt({ waitpid(pid, &status, 0) }) < 0 { return 127 }
        // WIFEXITED / WEXITSTATUS
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}
