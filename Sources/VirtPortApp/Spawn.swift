#if canImport(Glibc)
import Glibc
#endif
import VirtPortCore

/// Runs a helper program (iptables, nft) without a shell. Used only when libvirt's firewall needs a
/// change, never on the hot path: presence checks read the kernel over netlink instead.
enum Spawn {
    struct Result {
        var status: Int32
        var stderr: String
    }

    /// The first executable named `name` in the usual system directories (hooks get a minimal PATH).
    static func find(_ name: String) -> String? {
        for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] where access("\(dir)/\(name)", X_OK) == 0 {
            return "\(dir)/\(name)"
        }
        return nil
    }

    /// posix_spawn with stdin and stdout on /dev/null (a hook must never write to stdout), stderr
    /// captured through a pipe.
    static func run(_ argv: [String]) throws(VirtPortError) -> Result {
        guard let path = argv.first else { throw .invalid("empty command") }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw .operational("pipe", cause: IO.errnoText()) }
        fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        let cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        let envStrings: [String] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"]
        let env: [UnsafeMutablePointer<CChar>?] = envStrings.map { strdup($0) } + [nil]
        defer { for p in env { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, cargs, env)
        close(fds[1])
        defer { close(fds[0]) }
        guard rc == 0 else { throw .operational("cannot run \(path)", cause: IO.errnoText(rc)) }
        let err = (try? IO.readAll(fd: fds[0], what: path, limit: 1 << 20)) ?? []
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Result(status: code, stderr: String(decoding: err, as: UTF8.self).trimmed)
    }
}
