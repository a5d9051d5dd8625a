#if canImport(Glibc)
import Glibc
#endif
import Engine
import POSIX
import VirtPortCore

// What `install`, `uninstall` and `doctor` need to know about the host around libvirt: which libvirt
// daemons run (monolithic libvirtd or the modular virtqemud/virtnetworkd), AppArmor's profile for
// them, virtport's systemd units. None of this is on the hook path.


/// A running libvirt daemon that reads hooks.
struct LibvirtDaemon: Sendable {
    var name: String
    var pid: Int32
    /// Seconds since the epoch when the process started.
    var startedAt: Int64
}

enum LibvirtDaemons {
    /// Daemons that run hooks, by the pid file each writes when run as root. `libvirtd` runs every
    /// hook; with modular daemons `virtqemud` runs the qemu hook and `virtnetworkd` the network hook.
    static let known: [(name: String, pidFile: String)] = [
        ("libvirtd", "/run/libvirtd.pid"), ("virtqemud", "/run/virtqemud.pid"), ("virtnetworkd", "/run/virtnetworkd.pid"),
    ]

    static func running() -> [LibvirtDaemon] {
        var out: [LibvirtDaemon] = []
        for (name, pidFile) in known {
            guard let text = HostPaths.readText(pidFile), let pid = Int32(text.trimmed), pid > 1,
                  HostPaths.readText("/proc/\(pid)/comm")?.trimmed == name
            else { continue }
            out.append(LibvirtDaemon(name: name, pid: pid, startedAt: startTime(pid: pid) ?? 0))
        }
        return out
    }

    /// Every running daemon rescans its hook files (they are read only at start or on SIGHUP). A
    /// stamp per daemon (`rescan.NAME` holding its pid, next to the agent socket) tells `doctor`
    /// later that this daemon was told after the hooks changed.
    /// - Returns: the names of the daemons that were sent the SIGHUP.
    @discardableResult
    static func rescan(stampDir: String) -> [String] {
        let daemons = running()
        if daemons.isEmpty {
            Output.out("no libvirt daemon (libvirtd, virtqemud, virtnetworkd) is running: they read the hooks when they start")
            return []
        }
        var signalled: [String] = []
        for d in daemons {
            if Process.signal(d.pid, SIGHUP) {
                signalled.append(d.name)
                Output.out("\(d.name) (pid \(d.pid)) told to rescan its hooks (SIGHUP)")
                try? IO.makeDirectories(stampDir, mode: 0o755)
                try? IO.writeFile("\(stampDir)/rescan.\(d.name)", "\(d.pid)\n", mode: 0o644)
            } else {
                Output.err("cannot signal \(d.name) (pid \(d.pid)): \(Errno.current("kill"))")
            }
        }
        return signalled
    }

    /// The pid a stamp names and when it was written, if any.
    static func stamp(stampDir: String, name: String) -> (pid: Int32, at: Int64)? {
        let path = "\(stampDir)/rescan.\(name)"
        guard let text = HostPaths.readText(path), let pid = Int32(text.trimmed),
              let written = FileSystem.stamp(path) else { return nil }
        return (pid, written.modifiedSeconds)
    }

    /// Process start time from /proc/PID/stat (clock ticks after boot) and /proc/stat's btime.
    static func startTime(pid: Int32) -> Int64? {
        guard let stat = HostPaths.readText("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")"),
              let procStat = HostPaths.readText("/proc/stat")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // Field 22 of the whole line is the 20th after "(comm)".
        guard fields.count > 19, let ticks = Int64(fields[19]) else { return nil }
        var btime: Int64?
        for line in procStat.split(separator: "\n") where line.hasPrefix("btime ") {
            btime = Int64(line.dropFirst(6).trimmed)
        }
        guard let boot = btime else { return nil }
        let hz = Int64(sysconf(Int32(_SC_CLK_TCK)))
        return boot + ticks / max(hz, 1)
    }
}

/// Debian's and Ubuntu's AppArmor profile for libvirtd lets it execute `/usr/bin/*`, `/usr/sbin/*`
/// (PUx) and `/etc/libvirt/hooks/**`, judged on the resolved path: a hook symlinked to
/// `/usr/local/bin/virtport` is denied. For a binary elsewhere, `install` adds one rule to the
/// profile's local override and reloads the profile; `uninstall` takes it out again.
enum AppArmor {
    /// Profiles of the daemons that run hooks (the modular ones where the distribution has them).
    static let profiles = ["usr.sbin.libvirtd", "usr.sbin.virtqemud", "usr.sbin.virtnetworkd"]
    static let marker = "# virtport: libvirt's hooks are symlinks to"

    static var dir: String { HostPaths.path("/etc/apparmor.d") }

    static var enabled: Bool {
        HostPaths.readText(HostPaths.path("/sys/module/apparmor/parameters/enabled"))?.hasPrefix("Y") ?? false
    }

    /// Profiles present on this host.
    static func present() -> [String] { profiles.filter { FileSystem.exists("\(dir)/\($0)") } }

    /// The stock profiles' exec rules (`/bin/* PUx`, `/usr/bin/* PUx`, …): one directory level.
    static func allowedByProfile(_ exe: String) -> Bool {
        ["/bin", "/sbin", "/usr/bin", "/usr/sbin"].contains(FileSystem.dirname(exe))
    }

    static func rule(_ exe: String) -> String { "\(exe) PUx," }

    static func localPath(_ profile: String) -> String { "\(dir)/local/\(profile)" }

    /// True when the profile's local override holds our rule for `exe`.
    static func hasOverride(_ profile: String, exe: String) -> Bool {
        HostPaths.readText(localPath(profile))?.split(separator: "\n").contains { $0.trimmed == rule(exe) } ?? false
    }

    /// Our lines out of the override text (the marker comment and the rule after it).
    static func withoutOurs(_ text: String) -> String {
        var out: [Substring] = []
        var skipNext = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if skipNext {
                skipNext = false
                if line.trimmed.hasSuffix(" PUx,") { continue }
            }
            if line.hasPrefix(marker) {
                skipNext = true
                continue
            }
            out.append(line)
        }
        return out.joined(separator: "\n")
    }

    /// `install`: the rule for `exe` in each present profile's local override (or none, and any
    /// old rule of ours removed, when the profile already allows `exe`), then the profile reloaded.
    static func install(exe: String) throws(VirtPortError) {
        for profile in present() {
            let path = localPath(profile)
            let old = HostPaths.readText(path) ?? ""
            var text = withoutOurs(old)
            if !allowedByProfile(exe) {
                if !text.isEmpty && !text.hasSuffix("\n") { text += "\n" }
                text += "\(marker) \(exe) (written by `virtport install`, removed by `virtport uninstall`)\n\(rule(exe))\n"
            }
            if text == old {
                if !allowedByProfile(exe) { Output.out("\(path): AppArmor rule for \(exe) in place") }
                continue
            }
            try IO.makeDirectories(FileSystem.dirname(path), mode: 0o755)
            try IO.writeFile(path, text, mode: 0o644)
            Output.out(allowedByProfile(exe)
                ? "\(path): old virtport rule removed (\(exe) is allowed by the profile itself)"
                : "\(path): added `\(rule(exe))` (the profile lets libvirt execute only /usr/bin, /usr/sbin and the hooks directory)")
            reload(profile)
        }
    }

    static func uninstall() throws(VirtPortError) {
        for profile in present() {
            let path = localPath(profile)
            guard let old = HostPaths.readText(path) else { continue }
            let text = withoutOurs(old)
            if text == old { continue }
            try IO.writeFile(path, text, mode: 0o644)
            Output.out("\(path): virtport's rule removed")
            reload(profile)
        }
    }

    static func reload(_ profile: String) {
        let file = "\(dir)/\(profile)"
        guard enabled else {
            Output.out("AppArmor is not active: \(file) takes the override when it is loaded")
            return
        }
        guard let parser = Spawn.find("apparmor_parser", in: ["/usr/sbin", "/sbin"]) else {
            Output.err("apparmor_parser not found: reload the profile yourself (apparmor_parser -r \(file))")
            return
        }
        if Spawn.run([parser, "-r", file]) == 0 {
            Output.out("AppArmor profile \(file) reloaded")
        } else {
            Output.err("apparmor_parser -r \(file) failed: libvirt may be denied executing the hooks until it is reloaded")
        }
    }
}

/// What `install`/`uninstall` may touch besides the hooks directory and what the config names.
/// libvirt reads its hooks from one directory, compiled in: `/etc/libvirt/hooks`. The host-wide steps
/// (AppArmor's local override for libvirt's daemons, the daemons told to rescan, virtport's systemd
/// units) are for that directory only. Given another one (`--hooks-dir DIR`, `[paths] hooks_dir`),
/// the commands work on DIR and the config's journal, table and socket, and leave the rest alone.
/// Under `VIRTPORT_SYSROOT` (a fake host tree) the AppArmor and systemd steps act inside that tree.
enum HostScope {
    static let libvirtHooksDir = "/etc/libvirt/hooks"

    static func isLibvirts(_ hooksDir: String) -> Bool {
        var d = hooksDir
        while d.count > 1 && d.hasSuffix("/") { d.removeLast() }
        if d == libvirtHooksDir { return true }
        guard let a = resolved(d), let b = resolved(libvirtHooksDir) else { return false }
        return a == b
    }

    /// realpath(3), or nil when the path does not resolve (absent).
    static func resolved(_ path: String) -> String? {
        guard let r = realpath(path, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    /// AppArmor's override and the units: for libvirt's hooks directory, or inside a fake host tree.
    static func hostFiles(_ hooksDir: String) -> Bool { isLibvirts(hooksDir) || HostPaths.sysroot != nil }

    /// The one line saying what was left alone, when something was.
    static func note(_ hooksDir: String) {
        guard !isLibvirts(hooksDir) else { return }
        Output.out("\(hooksDir) is not libvirt's hooks directory (\(libvirtHooksDir)): no libvirt daemon signalled"
                   + (hostFiles(hooksDir) ? "" : ", AppArmor and systemd units left alone"))
    }
}

/// virtport's systemd units: `uninstall` leaves none of them enabled (the boot-time reconcile
/// would otherwise re-create forwards that no hook removes any more). Their directories are host
/// files: `VIRTPORT_SYSROOT` prefixes them (and `systemctl --root` then works on that tree).
enum SystemdUnits {
    static let units = ["virtport-agent.service", "virtport-reconcile.service"]
    static let unitDirs = ["/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"]

    /// systemd is PID 1 (the check sd_booted() makes).
    static var running: Bool { HostPaths.sysroot == nil && FileSystem.isDirectory("/run/systemd/system") }

    static func present() -> [String] {
        units.filter { u in unitDirs.contains { FileSystem.exists(HostPaths.path("\($0)/\(u)")) } }
    }

    /// `systemctl is-enabled` works offline too.
    static func enabled(_ unit: String) -> Bool {
        guard let sc = Spawn.find("systemctl", in: ["/usr/bin", "/bin"]) else { return false }
        return Spawn.run([sc, "is-enabled", "--quiet", unit], quiet: true) == 0
    }

    static func disable() {
        let units = present()
        guard !units.isEmpty, let sc = Spawn.find("systemctl", in: ["/usr/bin", "/bin"]) else { return }
        let now = running ? ["--now"] : []
        let root = HostPaths.sysroot.map { ["--root=\($0)"] } ?? []
        if Spawn.run([sc] + root + ["disable", "--quiet"] + now + units) == 0 {
            Output.out("\(units.joined(separator: ", ")): disabled\(running ? " and stopped" : "") (`systemctl enable --now UNIT` after `virtport install` turns them on again)")
        } else {
            Output.err("systemctl disable \(units.joined(separator: " ")) failed")
        }
    }
}

