public import Journal
import VirtPortCore

/// Every decision of hooks, agent and commands, one line each in the system log (`SystemLog`):
/// what became of which mapping of which domain, and why. `journalctl -t virtport` answers "why
/// does my port not work" even when the hook exited 0 (libvirt logs a successful hook's stderr only
/// at debug level). The lines a hook also prints for libvirt go through `Diagnostics`; these go to
/// the log whoever runs the work.
///
///     applied: domain 'web' tcp *:2222 -> 192.168.122.10:22 (hook qemu start)
///     pending: domain 'web' tcp *:8080 -> (pending):8080, NIC 52:54:00:aa:bb:01 on network default has no address yet … (hook qemu start)
///     removed: domain 'web' tcp *:2222 -> 192.168.122.10:22 (hook qemu stopped)
///     refused: domain 'web' prepare: portForward[1]/range[1]: host port 22 is outside … 
public struct EventLog: Sendable {
    /// Where the lines go ("" nowhere).
    public var socket: String

    public init(socket: String) { self.socket = socket }
    public init(config: Config) { socket = config.syslogSocket }

    public func info(_ text: String) { SystemLog.send(.info, text, socket: socket) }
    public func notice(_ text: String) { SystemLog.send(.notice, text, socket: socket) }
    public func warning(_ text: String) { SystemLog.send(.warning, text, socket: socket) }
    public func error(_ text: String) { SystemLog.send(.error, text, socket: socket) }

    /// One line per mapping a committed change added, completed, left pending or removed.
    /// - Parameter completed: the rows that replaced a pending row of the same NIC and host ports
    ///   (a lease that appeared) are logged as "completed" instead of "applied".
    public func change(domain: DomainRef, adding: [ActiveMapping], removing: [ActiveMapping], reason: String) {
        if socket.isEmpty { return }
        let who = "domain '\(Quoted.message(domain.name))'"
        var replacedPending = Set<String>()
        for r in removing where r.mapping.isPending { replacedPending.insert(Self.slot(r.mapping)) }
        var completedSlots = Set<String>()
        var lines: [(SystemLog.Severity, String)] = []
        lines.reserveCapacity(adding.count + removing.count)
        for r in adding {
            let m = r.mapping
            let text = MappingText.describe(m)
            if m.isPending {
                lines.append((.warning, "pending: \(who) \(text): \(Self.pendingWhy(m)) (\(reason))"))
            } else if !replacedPending.isEmpty && replacedPending.contains(Self.slot(m)) {
                completedSlots.insert(Self.slot(m))
                lines.append((.notice, "completed: \(who) \(text), guest address from \(m.guestSource.rawValue) (\(reason))"))
            } else {
                lines.append((.notice, "applied: \(who) \(text) (\(reason))"))
            }
        }
        for r in removing {
            let m = r.mapping
            if m.isPending {
                if !completedSlots.contains(Self.slot(m)) {
                    lines.append((.info, "dropped pending: \(who) \(MappingText.describe(m)) (\(reason))"))
                }
            } else {
                lines.append((.notice, "removed: \(who) \(MappingText.describe(m)) (\(reason))"))
            }
        }
        SystemLog.send(lines, socket: socket)
    }

    /// A start or edit refused (exit 2): the line libvirt or the command showed.
    public func refused(_ line: String) { warning("refused: \(line)") }

    /// What a forward that is pending waits for, for whoever reads the log.
    static func pendingWhy(_ m: Mapping) -> String {
        let nic = m.mac.map { "NIC \($0)" } ?? "the NIC"
        let net = m.network.map { " on network \($0)" } ?? ""
        return "\(nic)\(net) has no address yet (no guest=, no DHCP reservation, no lease); "
            + "virtport agent completes it when a lease appears, else run 'virtport reconcile' once the guest has one"
    }

    /// Which NIC's which host ports: a pending row and the row that completes it share it.
    static func slot(_ m: Mapping) -> String {
        "\(m.proto.rawValue)|\(m.hostAddress.map { "\($0)" } ?? "")|\(m.dev ?? "")|\(m.hostPorts)|\(m.mac.map { "\($0)" } ?? "")"
    }
}
