public import VirtPortCore

/// The qemu hook operations virtport acts on (libvirt's others — started, attach… — are
/// accepted and ignored).
public enum QemuOperation: String, Sendable, CaseIterable {
    case prepare, start, reconnect, stopped, release
    /// `migrate begin` (the incoming side of a live migration) and `restore begin` (virsh restore,
    /// managed save): a domain arriving; checked like `prepare` before its guest runs.
    case migrate, restore

    /// Read-only checks before the guest runs: prepare, and the arrivals.
    public var isCheck: Bool { self == .prepare || self == .migrate || self == .restore }

    /// Whether the domain XML at this operation still describes a VM about to run (plan it) or
    /// one that is gone (tear down from the journal by UUID: the XML no longer names tap or bridge).
    public var isTeardown: Bool { self == .stopped || self == .release }
}

/// The work of one qemu hook call whose input mentions virtport's namespace, wherever it runs: in
/// the hook process, or in the agent on the hook's behalf. The same messages and exit status
/// either way (README "Hook behaviour").
public enum QemuWork {
    /// Plans, checks and applies (or removes) the domain's forwards; returns the hook's exit status.
    /// - Parameters:
    ///   - resources: the hook's own (`Resources.perProcess`) or the agent's warm ones.
    ///   - diagnostics: where the one line about a failure goes.
    public static func run(_ op: QemuOperation, domainName: String, input: [UInt8], resources: Resources,
                           diagnostics: any Diagnostics) -> Int32 {
        let reason = "hook qemu \(op.rawValue)"
        do throws(VirtPortError) {
            switch op {
            case .prepare, .migrate, .restore:
                let domain = try DomainXML.parse(input)
                try DomainSync.check(domain, resources: resources, diagnostics: diagnostics)
                // The start that follows an arrival says so in history (`Arrival`).
                if op != .prepare { Arrival.note(resources.config, uuid: domain.uuid, op: op) }
            case .start, .reconnect:
                let domain = try DomainXML.parse(input)
                let why = op == .start ? Arrival.reason(resources.config, uuid: domain.uuid, base: reason) : reason
                try DomainSync.apply(domain, reason: why, resources: resources, diagnostics: diagnostics)
            case .stopped, .release:
                guard let uuid = HookInput.domainUUID(input) else {
                    throw VirtPortError.invalid("domain XML on stdin has no <uuid>")
                }
                Arrival.drop(resources.config, uuid: uuid)
                try DomainSync.remove(uuid: uuid, reason: reason, resources: resources, diagnostics: diagnostics)
            }
            return 0
        } catch {
            return report(error, op: op.rawValue, domain: domainName, policy: resources.config.policy,
                          diagnostics: diagnostics, log: EventLog(config: resources.config))
        }
    }

    /// `domain 'web' prepare`, or with `error` the hook's whole line `domain 'web' prepare: …`.
    public static func line(op: String, domain: String, _ error: VirtPortError? = nil) -> String {
        let prefix = "domain '\(Quoted.message(domain))' \(op)"
        return error.map { "\(prefix): \($0)" } ?? prefix
    }

    /// One line about `error`; the exit status follows the hook contract and the policy:
    /// invalid input 2 (libvirt refuses the start and shows the line); `reconnect` always 0 (a
    /// failing reconnect makes libvirt kill the VM); internal trouble 1 at teardown or when
    /// `on_internal_error = "refuse"`, else 0 with the line saying the VM start continues.
    /// The same line goes to the system log (`log`): a refusal, or a warning about a start that
    /// continued without its forwards.
    public static func report(_ error: VirtPortError, op: String, domain: String, policy: Policy,
                              diagnostics: any Diagnostics, log: EventLog) -> Int32 {
        let prefix = line(op: op, domain: domain)
        func say(_ line: String, refused: Bool = false) {
            diagnostics.emit(line)
            if refused { log.refused(line) } else { log.warning(line) }
        }
        if op == QemuOperation.reconnect.rawValue {
            say("\(prefix): \(error) (ignored: reconnect never fails; run 'virtport reconcile')")
            return 0
        }
        if error.code == .invalidInput {
            say("\(prefix): \(error)", refused: !(QemuOperation(rawValue: op)?.isTeardown ?? false))
            return 2
        }
        let teardown = QemuOperation(rawValue: op)?.isTeardown ?? false
        if policy.onInternalError == .refuse || teardown {
            say("\(prefix): \(error)", refused: !teardown)
            return 1
        }
        say("\(prefix): \(error) (VM start continues: policy on_internal_error = \"warn\"; run 'virtport reconcile')")
        return 0
    }
}

/// The network hook's one job.
public enum NetworkWork {
    /// Network `started`: libvirt has just rebuilt its own firewall; re-apply everything this
    /// network needs. Never fails (a non-zero exit would make libvirt tear the network down).
    public static func started(name: String, input: [UInt8], resources: Resources, diagnostics: any Diagnostics) -> Int32 {
        do throws(VirtPortError) {
            let net = try NetworkXML.parse(input)
            try DomainLifecycle.networkStarted(net, reason: "hook network started", resources: resources, diagnostics: diagnostics)
        } catch {
            let line = "network \(name) started: \(error) (run 'virtport reconcile')"
            diagnostics.emit(line)
            EventLog(config: resources.config).warning(line)
        }
        return 0
    }
}
