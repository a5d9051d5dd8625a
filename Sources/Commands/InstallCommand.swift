#if canImport(Glibc)
import Glibc
#endif
import Agent
import Engine
import POSIX
import VirtPortCore

/// `virtport install` / `uninstall`: libvirt hooks in place (symlinks to this binary), libvirtd told
/// to rescan (SIGHUP). A hook file that is not ours is never touched: we go into `qemu.d/` instead.
/// Host-wide steps only for libvirt's own hooks directory (HostScope).
enum InstallCommand {
    static let kinds = ["qemu", "network"]

    static func install(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let config = try Config.load()
        let hooksDir = try args.option("--hooks-dir") ?? config.hooksDir
        let noReconcile = args.flag("--no-reconcile")
        try args.finish("install")
        guard let exe = FileSystem.readLink("/proc/self/exe") else { throw .operational("cannot resolve /proc/self/exe") }
        try IO.makeDirectories(hooksDir, mode: 0o755)
        for kind in kinds {
            let main = "\(hooksDir)/\(kind)"
            if isOurs(main) {
                try link(exe, at: main)  // refresh: the binary may have moved
                Output.out("\(main): virtport hook in place")
            } else if !FileSystem.exists(main) {
                try link(exe, at: main)
                Output.out("\(main): installed (-> \(exe))")
            } else {
                let dir = "\(hooksDir)/\(kind).d"
                try IO.makeDirectories(dir, mode: 0o755)
                try link(exe, at: "\(dir)/virtport")
                Output.out("\(main) exists and is not virtport's: left alone; installed \(dir)/virtport (libvirt >= 6.5 runs both)")
            }
        }
        try IO.makeDirectories(FileSystem.dirname(config.databasePath), mode: 0o700)
        if Environment.get("VIRTPORT_CONFIG") == nil && HostScope.isLibvirts(hooksDir) && !FileSystem.exists(Config.defaultPath) {
            try IO.makeDirectories(FileSystem.dirname(Config.defaultPath), mode: 0o755)
            try IO.writeFile(Config.defaultPath, ConfigKeys.template, mode: 0o644)
            Output.out("\(Config.defaultPath): default configuration written")
        }
        HostScope.note(hooksDir)
        if HostScope.hostFiles(hooksDir) { try AppArmor.install(exe: exe) }
        if HostScope.isLibvirts(hooksDir) {
            // The SIGHUP makes libvirt rebuild its firewall, which leaves virtport's accept rule below
            // its reject: watch from before the signal, wait for the rebuild to end, then reconcile.
            let reload = noReconcile ? nil : LibvirtReload.prepare(config)
            let signalled = rescan(config)
            if let reload, signalled.contains(where: LibvirtReload.rebuilders.contains) {
                LibvirtReload.report(reload.wait(), config: config)
            }
        }
        if !noReconcile {
            do {
                let fixes = try Reconciler(resources: .perProcess(config), running: RunningDomains.list(config: config).entries)
                    .run(dryRun: false, reason: "install")
                for f in fixes where f.action == .acceptRule { Output.out("fixed \(f.action.rawValue) \(f.what) (\(f.reason))") }
            } catch {
                Output.err("reconcile after install failed: \(error)")
            }
        }
        return 0
    }

    static func uninstall(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let config = try Config.load()
        let hooksDir = try args.option("--hooks-dir") ?? config.hooksDir
        let keepForwards = args.flag("--keep-forwards")
        try args.finish("uninstall")
        var removed = 0
        for kind in kinds {
            for path in ["\(hooksDir)/\(kind)", "\(hooksDir)/\(kind).d/virtport"] where isOurs(path) {
                do { try FileSystem.removeFile(path) } catch { throw .operational("cannot remove \(path)", cause: error) }
                Output.out("\(path): removed")
                removed += 1
            }
            FileSystem.removeEmptyDirectory("\(hooksDir)/\(kind).d")  // only if we left it empty
        }
        if removed == 0 { Output.out("no virtport hooks under \(hooksDir)") }
        HostScope.note(hooksDir)
        if HostScope.isLibvirts(hooksDir) { _ = rescan(config) }
        if HostScope.hostFiles(hooksDir) {
            try AppArmor.uninstall()
            SystemdUnits.disable()
        }
        // Without the hooks nothing would ever remove the forwards: take them down now, with history.
        if keepForwards {
            Output.out("kept: active forwards (--keep-forwards); nothing removes them once the hooks are gone")
        } else {
            for line in try Teardown.everything(config: config, reason: "uninstall") { Output.out(line) }
        }
        Output.out("kept: \(config.databasePath) (audit history) and \(Config.defaultPath)")
        return 0
    }

    /// A hook path is ours when it is a symlink to a file named `virtport`.
    static func isOurs(_ path: String) -> Bool {
        guard let target = FileSystem.readLink(path) else { return false }
        return FileSystem.basename(target) == "virtport"
    }

    static func link(_ exe: String, at path: String) throws(VirtPortError) {
        let tmp = path + ".virtport-new"
        FileSystem.remove(tmp)
        do { try FileSystem.makeSymlink(tmp, to: exe) } catch { throw .operational("cannot create \(tmp)", cause: error) }
        do { try FileSystem.rename(tmp, to: path) } catch {
            FileSystem.remove(tmp)
            throw .operational("cannot install \(path)", cause: error)
        }
    }

    /// libvirt's daemons read hook files only at start or on SIGHUP.
    /// - Returns: the names of the daemons signalled.
    @discardableResult
    static func rescan(_ config: Config) -> [String] {
        LibvirtDaemons.rescan(stampDir: FileSystem.dirname(config.agentSocket))
    }
}
