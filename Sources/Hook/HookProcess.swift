#if canImport(Glibc)
import Glibc
#endif
import Engine
import POSIX
import VirtPortCore

/// What libvirt runs: `…/hooks/qemu` and `…/hooks/network` (README "Hook behaviour"). Reads the
/// XML on stdin, skips domains without virtport metadata at the cost of a substring search, and
/// hands the rest to the agent when one runs (`AgentClient`), else does the work itself
/// (`QemuWork`) with resources of its own.
public enum HookProcess {
    public enum Kind: String, Sendable { case qemu, network }

    public static func run(kind: Kind, args: [String]) -> Int32 {
        silenceStdout()
        let diagnostics = StandardErrorDiagnostics()
        guard args.count >= 3 else {
            diagnostics.emit("hook \(kind.rawValue): expected OBJECT OPERATION SUB-OPERATION [EXTRA], got \(args.count) arguments")
            return 2
        }
        let object = args[0], op = args[1], subop = args[2]
        switch kind {
        case .qemu: return qemu(domainName: object, op: op, subop: subop, diagnostics: diagnostics)
        case .network: return network(name: object, op: op, diagnostics: diagnostics)
        }
    }

    /// `…/hooks/qemu`, `…/hooks/network`, or any file under `…/qemu.d/` / `…/network.d/`.
    public static func kind(invokedAs path: String) -> Kind? {
        if let k = Kind(rawValue: FileSystem.basename(path)) { return k }
        switch FileSystem.basename(FileSystem.dirname(path)) {
        case "qemu.d": return .qemu
        case "network.d": return .network
        default: return nil
        }
    }

    /// In `*.d/` libvirt treats hook stdout as a replacement XML: point fd 1 at /dev/null for good.
    static func silenceStdout() {
        let fd = open("/dev/null", O_WRONLY | O_CLOEXEC)
        if fd >= 0 {
            dup2(fd, 1)
            close(fd)
        }
    }

    static func qemu(domainName: String, op: String, subop: String, diagnostics: any Diagnostics) -> Int32 {
        // started, restore, migrate, attach, … : accepted, nothing to do.
        guard let operation = QemuOperation(rawValue: op) else { return 0 }
        let stdin: HookStdin
        do { stdin = try HookStdin.read(limit: HookInput.limit) } catch {
            return QemuWork.report(error, op: op, domain: domainName, policy: Policy(), diagnostics: diagnostics,
                                    log: EventLog(config: Config()))
        }
        // Fast path: no metadata in our namespace, nothing to install or remove, whatever the size —
        // unless the `[guard]` policy guards bridges or networks (then every domain's NICs on them
        // are guarded, metadata or not: one config read more for those hosts only).
        // (Teardown of a domain whose metadata vanished while running is reconcile's job; at
        // stopped/release the XML is the definition the domain ran with.)
        var policyGuarded: Config?
        if !stdin.mentions {
            guard let c = try? Config.load(warn: false), c.policy.guardsAnyPort else { return 0 }
            policyGuarded = c
        }
        // Too large to parse: refused before the guest runs; teardown still finds the <uuid>.
        if stdin.oversize && !operation.isTeardown {
            let what = stdin.mentions ? "a domain with virtport metadata" : "a domain the [guard] policy guards"
            let e = VirtPortError.invalid("domain XML: input is \(stdin.total) bytes, over the limit of \(HookInput.limit) bytes for \(what)")
            return QemuWork.report(e, op: op, domain: domainName, policy: Policy(), diagnostics: diagnostics,
                                    log: EventLog(config: Config()))
        }
        let input = stdin.bytes
        let config: Config
        if let policyGuarded { config = policyGuarded } else {
            do { config = try Config.load(warn: false) } catch {
                return QemuWork.report(error, op: op, domain: domainName, policy: Policy(), diagnostics: diagnostics,
                                        log: EventLog(config: Config()))
            }
        }
        if let code = AgentClient.handOver(config: config, kind: .qemu, args: [domainName, op, subop], input: input) {
            return code
        }
        return QemuWork.run(operation, domainName: domainName, input: input, resources: .perProcess(config),
                            diagnostics: diagnostics)
    }

    static func network(name: String, op: String, diagnostics: any Diagnostics) -> Int32 {
        // Only `started` matters: libvirt has just rebuilt its own firewall. Never fail it.
        guard op == "started" else { return 0 }
        do throws(VirtPortError) {
            let input = try IO.readStdin(limit: HookInput.limit)
            let config = try Config.load(warn: false)
            return NetworkWork.started(name: name, input: input, resources: .perProcess(config), diagnostics: diagnostics)
        } catch {
            let line = "network \(name) started: \(error) (run 'virtport reconcile')"
            diagnostics.emit(line)
            EventLog(config: Config()).warning(line)
            return 0
        }
    }
}
