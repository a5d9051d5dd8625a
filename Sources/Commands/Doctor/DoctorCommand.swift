#if canImport(Glibc)
import Glibc
#endif
import Journal
import Agent
import Engine
import POSIX
import VirtPortCore

/// `virtport doctor [--json]`: what stands between a declared forward and a connection that
/// arrives, one finding per check. Exit 0 when nothing failed, 1 when a check failed, 2 for usage.
///
/// Status: `ok`; `warn` (worth knowing, may be intended: pending forwards, SELinux enforcing);
/// `fail` (a forward does not or will not work: exit 1). Every warn/fail names the problem, why it
/// matters and the command that fixes it.
enum DoctorCommand {
    static func run(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let json = args.flag("--json")
        try args.finish("doctor")
        let config = try Config.load()
        let findings = Doctor(config: config).run()
        if json {
            Output.out(JSONValue.array(findings.map(\.json)).serialized(pretty: true))
        } else {
            for f in findings {
                Output.out("\(f.status.padding(5)) \(f.check): \(f.problem ?? f.detail)")
                if f.status != "ok" {
                    if let why = f.why { Output.out("      why: \(why)") }
                    if let fix = f.fix { Output.out("      fix: \(fix)") }
                }
            }
        }
        return findings.contains { $0.status == "fail" } ? 1 : 0
    }
}

struct Finding: Sendable {
    var check: String
    var status: String  // ok | warn | fail
    var detail: String  // what was seen
    var problem: String? = nil
    var why: String? = nil
    var fix: String? = nil

    static func ok(_ check: String, _ detail: String) -> Finding { Finding(check: check, status: "ok", detail: detail) }

    static func fail(_ check: String, _ problem: String, why: String, fix: String, status: String = "fail") -> Finding {
        Finding(check: check, status: status, detail: problem, problem: problem, why: why, fix: fix)
    }

    var json: JSONValue {
        .object([("check", .string(check)), ("status", .string(status)), ("problem", .optional(problem)),
                 ("why", .optional(why)), ("fix", .optional(fix)), ("detail", .string(detail))])
    }
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
}

struct Doctor {
    let config: Config

    func run() -> [Finding] {
        var out: [Finding] = []
        let exe = FileSystem.readLink("/proc/self/exe") ?? "virtport"
        let hooks = hookFindings(exe: exe, into: &out)
        daemonFindings(hookTime: hooks, into: &out)
        out.append(apparmor(exe: exe))
        out.append(selinux())
        out += FirewallDoctor.findings()
        out += TraceDoctor.findings(config: config)
        out.append(ipForward())
        out.append(brNetfilter())
        let journalOK = journal(into: &out)
        out.append(agent())
        if journalOK { mappings(into: &out) }
        return out
    }

    // MARK: hooks and daemons

    /// Hooks in place and pointing at this binary; returns the newest hook link's mtime (or nil).
    func hookFindings(exe: String, into out: inout [Finding]) -> Int64? {
        var newest: Int64?
        for kind in InstallCommand.kinds {
            let dir = config.hooksDir
            let candidates = ["\(dir)/\(kind)", "\(dir)/\(kind).d/virtport"]
            guard let path = candidates.first(where: { InstallCommand.isOurs($0) }) else {
                out.append(.fail("hook \(kind)", "no virtport hook at \(dir)/\(kind) or \(dir)/\(kind).d/virtport",
                                 why: "libvirt runs no virtport code for \(kind) events: forwards are \(kind == "qemu" ? "never added or removed" : "not re-applied when libvirt rebuilds its firewall")",
                                 fix: "virtport install"))
                continue
            }
            let target = FileSystem.readLink(path) ?? "?"
            if let status = try? FileSystem.linkStatus(path) { newest = max(newest ?? 0, status.modifiedSeconds) }
            if !sameFile(target, exe) {
                out.append(.fail("hook \(kind)", "\(path) points at \(target), not at this binary (\(exe))",
                                 why: FileSystem.isExecutable(target) ? "libvirt runs another virtport than the one you are looking at"
                                     : "the target does not exist or is not executable: libvirt's \(kind) hook fails",
                                 fix: "\(exe) install"))
            } else {
                out.append(.ok("hook \(kind)", "\(path) -> \(target)"))
            }
        }
        return newest
    }

    func sameFile(_ a: String, _ b: String) -> Bool {
        guard let ia = FileSystem.identity(a) else { return false }
        return ia == FileSystem.identity(b)
    }

    func daemonFindings(hookTime: Int64?, into out: inout [Finding]) {
        // Hooks elsewhere than libvirt's directory: no daemon reads them, whichever runs (and
        // `install` did not signal any: HostScope).
        guard HostScope.isLibvirts(config.hooksDir) else {
            out.append(.fail("libvirt daemons", "\(config.hooksDir) is not libvirt's hooks directory (\(HostScope.libvirtHooksDir)): no libvirt daemon reads the hooks there",
                             why: "libvirt runs hooks only from the directory compiled into it: a VM start runs no virtport code",
                             fix: "virtport install --hooks-dir \(HostScope.libvirtHooksDir)   (and drop [paths] hooks_dir)",
                             status: "warn"))
            return
        }
        let daemons = LibvirtDaemons.running()
        if daemons.isEmpty {
            out.append(.fail("libvirt daemons", "none of libvirtd, virtqemud, virtnetworkd is running (no pid file with a live process)",
                             why: "no VM starts, so no hook runs; forwards of VMs that run without a daemon are kept in the kernel",
                             fix: "systemctl start libvirtd   (modular daemons: systemctl start virtqemud virtnetworkd)",
                             status: "warn"))
            return
        }
        let stampDir = FileSystem.dirname(config.agentSocket)
        for d in daemons {
            guard let hooks = hookTime else {
                out.append(.ok("daemon \(d.name)", "pid \(d.pid) running (no hooks to read)"))
                continue
            }
            if d.startedAt >= hooks {
                out.append(.ok("daemon \(d.name)", "pid \(d.pid) started after the hooks were installed: it has read them"))
            } else if let s = LibvirtDaemons.stamp(stampDir: stampDir, name: d.name), s.pid == d.pid, s.at >= hooks {
                out.append(.ok("daemon \(d.name)", "pid \(d.pid) was sent SIGHUP after the hooks were installed: it has read them"))
            } else {
                out.append(.fail("daemon \(d.name)", "\(d.name) (pid \(d.pid)) started before the hooks were installed and was not told to rescan since",
                                 why: "libvirt reads hook files only at start or on SIGHUP: VMs started now get no forwards",
                                 fix: "virtport install   (sends the SIGHUP and records it; a hand-sent kill -HUP \(d.pid) works but doctor cannot see it)"))
            }
        }
    }

    // MARK: confinement

    func apparmor(exe: String) -> Finding {
        guard AppArmor.enabled else { return .ok("apparmor", "AppArmor is not active") }
        let profiles = AppArmor.present()
        if profiles.isEmpty { return .ok("apparmor", "active, no profile for libvirt's daemons under \(AppArmor.dir)") }
        let denied = profiles.filter { !AppArmor.allowedByProfile(exe) && !AppArmor.hasOverride($0, exe: exe) }
        if denied.isEmpty {
            return .ok("apparmor", AppArmor.allowedByProfile(exe)
                ? "\(exe) is under a directory the profiles let libvirt execute"
                : "\(profiles.map { AppArmor.localPath($0) }.joined(separator: ", ")) allow \(exe)")
        }
        return .fail("apparmor", "AppArmor profile(s) \(denied.joined(separator: ", ")) do not let libvirt execute \(exe)",
                     why: "AppArmor judges a hook by its resolved path: libvirt may execute /usr/bin/*, /usr/sbin/* and /etc/libvirt/hooks/**, so every virtport hook is denied and no forward is applied",
                     fix: "\(exe) install   (adds `\(AppArmor.rule(exe))` to \(AppArmor.localPath(denied[0])) and reloads it; or install the Debian package, /usr/sbin/virtport)")
    }

    func selinux() -> Finding {
        guard let mode = HostPaths.readText(HostPaths.path("/sys/fs/selinux/enforce"))?.trimmed else {
            return .ok("selinux", "SELinux is not active")
        }
        if mode != "1" { return .ok("selinux", "SELinux is permissive") }
        return .fail("selinux", "SELinux is enforcing",
                     why: "libvirt runs hooks in its own domain (virtd_t / virtqemud_t); the targeted policy was not written for virtport's netlink_netfilter socket, its journal under /var/lib/virtport and its agent socket, so a hook may be denied (virtport refuses nothing silently: a denied hook reports its error to libvirt)",
                     fix: "ausearch -m avc -ts recent -c virtport | audit2allow -M virtport && semodule -i virtport.pp   (README \"SELinux\")",
                     status: "warn")
    }

    // MARK: kernel settings

    func ipForward() -> Finding {
        let v = HostPaths.readText("/proc/sys/net/ipv4/ip_forward")?.trimmed ?? "?"
        if v == "1" { return .ok("ip_forward", "net.ipv4.ip_forward = 1") }
        return .fail("ip_forward", "net.ipv4.ip_forward = \(v)",
                     why: "the kernel routes no packet between interfaces: a DNATed connection never reaches the guest (libvirt sets it when it starts a NAT network)",
                     fix: "sysctl -w net.ipv4.ip_forward=1   (persist: echo net.ipv4.ip_forward=1 > /etc/sysctl.d/60-virtport.conf)")
    }

    func brNetfilter() -> Finding {
        guard FileSystem.exists("/sys/module/br_netfilter") else { return .ok("br_netfilter", "not loaded") }
        let call = HostPaths.readText("/proc/sys/net/bridge/bridge-nf-call-iptables")?.trimmed ?? "?"
        return .ok("br_netfilter", "loaded (bridge-nf-call-iptables = \(call)): bridged frames also pass the IP firewall; a guest reaches other guests' forwards but not its own (README \"Hairpin\")")
    }

    // MARK: journal, agent, mappings

    func journal(into out: inout [Finding]) -> Bool {
        let path = config.databasePath
        guard JournalDB.exists(path: path) else {
            out.append(.ok("journal", "\(path) does not exist yet (the first forward creates it)"))
            return true
        }
        if let mode = FileSystem.permissions(path), mode & 0o077 != 0 {
            out.append(.fail("journal mode", "\(path) has mode \(String(mode & 0o777, radix: 8)), not 0600",
                             why: "the journal names every VM, address and port: other users should not read it",
                             fix: "chmod 0600 \(path)", status: "warn"))
        }
        do {
            let db = try JournalDB(path: path, readOnly: true)
            try db.quickCheck()
            out.append(.ok("journal", "\(path): integrity ok, schema \(JournalDB.schemaVersion)"))
            return true
        } catch {
            let text = error.message
            if error.code == .newerJournal {
                out.append(.fail("journal", text, why: "this virtport cannot read it: hooks fail to journal (policy on_internal_error decides whether VMs still start)",
                                 fix: "install the virtport version that wrote it (apt install virtport)"))
            } else if error.code == .olderJournal {
                out.append(.fail("journal", text, why: "an older schema: the next hook migrates it, reading commands refuse until then",
                                 fix: "virtport reconcile", status: "warn"))
            } else {
                out.append(.fail("journal", text, why: "hooks cannot record or remove forwards",
                                 fix: JournalDB.isCorrupt(error) ? "virtport reconcile   (moves it aside and rebuilds it from the running VMs)" : "ls -l \(path); virtport reconcile"))
            }
            return false
        }
    }

    func agent() -> Finding {
        let sock = config.agentSocket
        if FileSystem.exists(sock) {
            if let fd = UnixSocket.connect(to: sock) {
                defer { fd.close() }
                // A request the agent declines (no hook kind): it answers, and logs nothing.
                let probe = AgentFrame.Request(configPath: config.sourcePath, kind: AgentFrame.probeKind, args: [], input: [])
                if FrameIO.send(fd, AgentFrame.encode(probe)), let frame = FrameIO.receive(fd, timeoutMs: 2_000),
                   AgentFrame.decodeReply(frame) != nil {
                    return .ok("agent", "listening on \(sock) and answering")
                }
                return .fail("agent", "\(sock) accepts connections but did not answer a request within 2 s",
                             why: "each hook waits up to 2 s for the agent's claim before doing the work itself: VM starts are slower",
                             fix: SystemdUnits.running ? "systemctl restart virtport-agent; journalctl -u virtport-agent" : "restart virtport agent",
                             status: "warn")
            }
            return .fail("agent", "\(sock) exists but nothing accepts connections (stale socket)",
                         why: "each hook tries it first and then does the work itself: slower, but forwards still work",
                         fix: SystemdUnits.running ? "systemctl restart virtport-agent" : "virtport agent &   (or remove \(sock))", status: "warn")
        }
        if SystemdUnits.running && SystemdUnits.present().contains("virtport-agent.service") && SystemdUnits.enabled("virtport-agent.service") {
            return .fail("agent", "virtport-agent.service is enabled but not listening on \(sock)",
                         why: "hooks do the work themselves (forwards still work, each hook is a few ms slower)",
                         fix: "systemctl restart virtport-agent; journalctl -u virtport-agent", status: "warn")
        }
        return .ok("agent", "not running (optional: hooks do the work themselves)")
    }

    func mappings(into out: inout [Finding]) {
        var rows: [ActiveMapping] = []
        do {
            if JournalDB.exists(path: config.databasePath) {
                rows = try JournalDB(path: config.databasePath, readOnly: true).activeMappings()
            }
        } catch {
            out.append(.fail("forwards", "cannot read the journal: \(error.message)", why: "forwards cannot be checked", fix: "virtport reconcile"))
            return
        }
        for r in rows where r.state == .pending {
            let m = r.mapping
            out.append(.fail("pending \(r.domain.name)", "\(m.proto.rawValue) \(Listing.hostText(m)) waits for the guest address of \(m.mac.map { "\($0)" } ?? "the domain's NIC")",
                             why: "no guest= attribute, no DHCP reservation and no DHCP lease for that MAC yet: nothing is forwarded until one appears",
                             fix: "add guest='ADDRESS' to the portForward, or a reservation: virsh net-update \(m.network ?? "NETWORK") add ip-dhcp-host \"<host mac='\(m.mac.map { "\($0)" } ?? "MAC")' ip='ADDRESS'/>\" --live --config",
                             status: "warn"))
        }
        let fixes: [Fix]
        do {
            fixes = try Reconciler(resources: .perProcess(config), running: RunningDomains.list(config: config).entries)
                .run(dryRun: true, reason: "doctor")
        } catch {
            out.append(.fail("forwards", "cannot compare journal, kernel and running VMs: \(error.message)",
                             why: "forwards cannot be checked", fix: "virtport reconcile --dry-run"))
            return
        }
        let real = fixes.filter { $0.action != .skip }
        for f in fixes where f.action == .skip {
            if let explanation = f.explanation {
                // A forward held out of the kernel (fail-closed): not applied, and why.
                out.append(.fail("forwards", "\(f.domain ?? "?"): \(f.what): \(f.reason)", why: explanation,
                                 fix: "virtport reconcile   (once the cause is gone; the agent's self-heal retries by itself)"))
                continue
            }
            out.append(.fail("forwards", "\(f.domain ?? "?"): \(f.what)", why: f.reason,
                             fix: "virsh dumpxml \(f.domain ?? "DOMAIN") | virtport plan", status: "warn"))
        }
        if real.isEmpty {
            let applied = rows.filter { $0.state == .applied }.count
            out.append(.ok("forwards", "\(applied) applied mapping(s); kernel, journal and running VMs agree"))
            return
        }
        for f in real {
            let check = f.kind != ForwardKind.name ? f.kind : f.action == .acceptRule ? "libvirt firewall" : "forwards"
            let fix = f.action == .acceptRule
                ? "virtport reconcile   (a running agent does this by itself within a second of libvirt's rebuild: systemctl enable --now virtport-agent)"
                : "virtport reconcile"
            out.append(.fail(check, "\(f.action.rawValue) \(f.domain.map { "[\($0)] " } ?? "")\(f.what)",
                             why: describe(f), fix: fix))
        }
    }

    func describe(_ f: Fix) -> String {
        // A kind other than forwards says what its findings mean itself.
        if let explanation = f.explanation { return explanation }
        return switch f.action {
        case .kernelAdd, .rebuildTable:
            "the journal holds this forward but the kernel does not (\(f.reason)): connections to it are not forwarded"
        case .kernelDelete: "the kernel forwards a port no journal entry owns (\(f.reason))"
        case .addMapping: "a running VM declares a forward that is not applied (\(f.reason))"
        case .removeMapping: "a forward of a VM that is not running is still in place (\(f.reason))"
        case .acceptRule:
            "virtport keeps one accept rule in front of libvirt's reject for each NAT network with forwards (\(f.reason)); "
                + "libvirt re-inserts its rules at the top of its chains whenever it rebuilds them (virtnetworkd or libvirtd "
                + "started or sent SIGHUP, virtport install, a package upgrade)"
        default: f.reason
        }
    }
}
