#if canImport(Glibc)
import Glibc
#endif
import POSIX
import VirtPortCore

/// A domain that arrives instead of starting fresh: libvirt calls qemu `restore begin` (virsh
/// restore, managed save) or `migrate begin` (the incoming side of a migration) before the
/// prepare/start hooks of the same start. Those ops check conflicts like `prepare` and leave a note
/// (`arrival.UUID` next to the agent socket) so that the `start` that follows journals why the
/// forward appeared: history reason `hook qemu start (restore)` / `(incoming migration)`.
/// `stopped`/`release` drop a note a failed arrival left; a note older than an hour is ignored.
enum Arrival {
    static let maxAge: Int64 = 3600

    static func path(_ config: Config, uuid: String) -> String {
        "\(FileSystem.dirname(config.agentSocket))/arrival.\(uuid)"
    }

    static func note(_ config: Config, uuid: String, op: QemuOperation) {
        let why = op == .migrate ? "incoming migration" : "restore"
        let dir = FileSystem.dirname(config.agentSocket)
        try? IO.makeDirectories(dir, mode: 0o755)
        try? IO.writeFile(path(config, uuid: uuid), why + "\n", mode: 0o600)
    }

    /// The start's history reason, and the note consumed.
    static func reason(_ config: Config, uuid: String, base: String) -> String {
        let p = path(config, uuid: uuid)
        guard let why = HostPaths.readText(p)?.trimmed, !why.isEmpty else { return base }
        let fresh = FileSystem.stamp(p).map { Int64(time(nil)) - $0.modifiedSeconds <= maxAge } ?? false
        FileSystem.remove(p)
        return fresh ? "\(base) (\(why))" : base
    }

    static func drop(_ config: Config, uuid: String) {
        FileSystem.remove(path(config, uuid: uuid))
    }
}
