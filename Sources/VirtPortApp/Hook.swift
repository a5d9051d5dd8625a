#if canImport(Glibc)
import Glibc
#endif
import Journal
import VirtPortCore

/// libvirt hook entry points (docs/DESIGN.md "Hook behaviour").
///
/// Exit status: 0 ok (or internal trouble that the policy says must not block the VM);
/// 2 invalid metadata / policy / conflict (libvirt aborts the start and shows our one line);
/// 1 operational failure where the policy says refuse. `reconnect` always exits 0.
public enum Hook {
    /// The largest hook input we read (libvirt domain XML is a few KiB).
    static let inputLimit = 4 << 20

    public enum Kind: String, Sendable { case qemu, network }

    public static func run(kind: Kind, args: [String]) -> Int32 {
        silenceStdout()
        guard args.count >= 3 else {
            Output.err("hook \(kind.rawValue): expected OBJECT OPERATION SUB-OPERATION [EXTRA], got \(args.count) arguments")
            return 2
        }
        let object = args[0], op = args[1], subop = args[2]
        switch kind {
        case .qemu: return qemu(domainName: object, op: op, subop: subop)
        case .network: return network(name: object, op: op, subop: subop)
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

    static func qemu(domainName: String, op: String, subop: String) -> Int32 {
        switch op {
        case "prepare", "start", "reconnect", "stopped", "release":
            let input: [UInt8]
            do { input = try IO.readStdin(limit: inputLimit) } catch {
                return report(error, op: op, domain: domainName, policy: Policy())
            }
            // Fast path: no metadata in our namespace, nothing to install or remove.
            // (Teardown of a domain whose metadata vanished while running is reconcile's job; at
            // stopped/release the XML is the definition the domain ran with.)
            if !DomainXML.mentionsVirtPort(input) { return 0 }
            let config: Config
            do { config = try Config.load(warn: false) } catch {
                return report(error, op: op, domain: domainName, policy: Policy())
            }
            if let code = AgentClient.handOver(config: config, kind: .qemu, args: [domainName, op, subop], input: input) {
                return code
            }
            return qemu(domainName: domainName, op: op, input: input, config: config, warm: nil)
        default:
            // started, restore, migrate, attach, … : accepted, nothing to do.
            return 0
        }
    }

    /// The work of a qemu hook whose input mentions our namespace: in the hook process, or in the
    /// agent (`warm`: its open journal and netlink socket) on the hook's behalf.
    static func qemu(domainName: String, op: String, input: [UInt8], config: Config, warm: Warm?) -> Int32 {
        let reason = "hook qemu \(op)"
        do {
            let forwarder = Forwarder(config: config, warm: warm)
            switch op {
            case "prepare", "start", "reconnect":
                let domain = try DomainXML.parse(input)
                let plan = try Planner.plan(domain: domain, resolver: forwarder.resolver(), policy: config.policy)
                if op == "prepare" {
                    try forwarder.checkConflicts(plan)
                } else {
                    try forwarder.apply(plan, reason: reason)
                }
            case "stopped", "release":
                // The XML no longer names the tap or bridge: teardown works from the journal (by UUID).
                guard let uuid = HookInput.domainUUID(input) else {
                    throw VirtPortError.invalid("domain XML on stdin has no <uuid>")
                }
                try forwarder.remove(domainUUID: uuid, reason: reason)
            default:
                break
            }
            return 0
        } catch {
            return report(error, op: op, domain: domainName, policy: config.policy)
        }
    }

    static func network(name: String, op: String, subop: String) -> Int32 {
        switch op {
        case "started":
            // libvirt has just rebuilt its own firewall: re-apply everything this network needs.
            // Never fail: a non-zero exit here would make libvirt tear the network down.
            do {
                let input = try IO.readStdin(limit: inputLimit)
                let config = try Config.load(warn: false)
                guard JournalDB.exists(path: config.databasePath) else { return 0 }
                let net = try NetworkXML.parse(input)
                try Forwarder(config: config).reapply(network: net, reason: "hook network started")
            } catch {
                Output.err("network \(name) started: \(error) (run 'virtport reconcile')")
            }
            return 0
        default:
            return 0
        }
    }

    /// One line on stderr; the exit status follows docs/DESIGN.md and the policy.
    static func report(_ error: any Error, op: String, domain: String, policy: Policy) -> Int32 {
        let e = (error as? VirtPortError) ?? VirtPortError.operational("\(error)")
        let prefix = "domain '\(domain)' \(op)"
        if op == "reconnect" {
            // A failing reconnect makes libvirt kill the running VM: never fail it.
            Output.err("\(prefix): \(e) (ignored: reconnect never fails; run 'virtport reconcile')")
            return 0
        }
        if e.code == .invalidInput {
            Output.err("\(prefix): \(e)")
            return 2
        }
        if policy.onJournalError == .refuse || op == "stopped" || op == "release" {
            Output.err("\(prefix): \(e)")
            return 1
        }
        Output.err("\(prefix): \(e) (VM start continues: policy on_internal_error = \"warn\"; run 'virtport reconcile')")
        return 0
    }
}
