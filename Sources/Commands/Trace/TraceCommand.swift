#if canImport(Glibc)
import Glibc
#endif
import Engine
import Journal
import Netfilter
import POSIX
import VirtPortCore

/// Set by SIGINT/SIGTERM/SIGHUP: the trace stops and removes its tables.
nonisolated(unsafe) private var traceStop: sig_atomic_t = 0

/// `virtport trace [VM] PROTO HOSTPORT [--from PREFIX] [--count N] [--timeout S] [--json]`
/// (README "Why does my port not answer?"): marks the matching packets with `meta nftrace set 1`
/// in tables of its own (`TraceTables`), listens to nf_tables' trace events and prints each
/// packet's path, hop by hop, then a one-line verdict naming the table and rule that dropped or
/// rejected it, or saying it reached the guest. Its tables go when it ends, however it ends
/// (timeout, Ctrl-C, SIGTERM); a trace killed with SIGKILL leaves them to `doctor`/`reconcile`.
enum TraceCommand {
    static let usageLine = "usage: virtport trace [VM] PROTO HOSTPORT [--from PREFIX] [--count N] [--timeout S] [--json]"

    static func run(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let json = args.flag("--json")
        let fromText = try args.option("--from"), countText = try args.option("--count"), timeoutText = try args.option("--timeout")
        var positional: [String] = []
        while let a = args.next() {
            if a.hasPrefix("-") { throw .invalid("trace: unknown option '\(Quoted.message(a))'\n\(usageLine)") }
            positional.append(a)
        }
        guard positional.count == 2 || positional.count == 3 else { throw .invalid(usageLine) }
        let vm = positional.count == 3 ? positional[0] : nil
        let protoText = positional[positional.count - 2], portText = positional[positional.count - 1]
        guard let proto = IPProto(rawValue: protoText) else {
            throw .invalid("trace: protocol '\(Quoted.message(protoText))' is not tcp, udp or sctp")
        }
        guard let port = UInt16(portText), port > 0 else { throw .invalid("trace: '\(Quoted.message(portText))' is not a port (1-65535)") }
        var from: (address: IPAddress, length: Int)?
        if let fromText {
            let parts = fromText.split(separator: "/", maxSplits: 1).map(String.init)
            guard let ip = IPAddress(parts[0]) else { throw .invalid("trace: --from '\(Quoted.message(fromText))' is not an address or prefix") }
            let max = ip.family == .ipv4 ? 32 : 128
            let length = parts.count == 2 ? Int(parts[1]) : max
            guard let length, length >= 0, length <= max else { throw .invalid("trace: --from '\(Quoted.message(fromText))' has a bad prefix length") }
            from = (ip, length)
        }
        let count = try number(countText, "--count", default: 1, range: 1...1000)
        let timeout = try number(timeoutText, "--timeout", default: 30, range: 1...86_400)
        guard geteuid() == 0 else { throw .operational("trace reads and changes nftables (run as root)") }

        let config = try Config.load()
        // The forward: its guest, to trace the replies too.
        var guest: (address: IPAddress, port: UInt16)?
        var notes: [String] = []
        let resources = Resources.perProcess(config)
        if let db = try? resources.existingJournal(readOnly: true), let rows = try? db.activeMappings() {
            let mine = rows.filter { $0.mapping.proto == proto && $0.mapping.hostPorts.contains(port) && (vm == nil || $0.domain.name == vm) }
            if let r = mine.first(where: { !$0.mapping.isPending }), let g = r.mapping.guestAddress {
                guest = (g, r.mapping.guestPortStart &+ (port - r.mapping.hostPorts.start))
                notes.append("forward: domain '\(Quoted.message(r.domain.name))' \(MappingText.describe(r.mapping))")
            } else if let r = mine.first {
                notes.append("forward: domain '\(Quoted.message(r.domain.name))' \(MappingText.describe(r.mapping)) is pending: no guest address, nothing is forwarded")
            } else {
                notes.append("no forward of \(vm.map { "domain '\(Quoted.message($0))'" } ?? "any domain") holds \(proto.rawValue)/\(port): tracing anyway")
            }
        }
        let nf: NetfilterSession
        let listener: TraceListener
        do {
            nf = try NetfilterSession(table: config.table)
            listener = try TraceListener()
        } catch {
            throw .operational("trace: cannot open netlink", cause: error)
        }
        let name = nf.traceTablePrefix + String(getpid())
        for s in [SIGINT, SIGTERM, SIGHUP] {
            _ = signal(s) { _ in traceStop = 1 }
        }
        // A closed stdout (`| head`) must not kill the trace before it removes its tables.
        _ = signal(SIGPIPE, SIG_IGN)
        do {
            try nf.installTrace(name: name, match: TraceMatch(proto: proto, hostPort: port, from: from, guest: guest))
        } catch {
            try? nf.removeTrace(name: name)
            throw .operational("trace: cannot add table inet \(name)", cause: error)
        }
        defer { try? nf.removeTrace(name: name) }

        var report = TraceReport(table: config.table, traceTable: name, proto: proto, hostPort: port, guest: guest)
        report.limit = count
        report.interfaceName = { index in
            var buf = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
            return if_indextoname(index, &buf) != nil ? Bytes.text(buf) : "if\(index)"
        }
        if let rules = try? nf.listAllRules() {
            for r in rules { report.rules[report.key(r.family, r.table, r.chain, r.handle)] = r }
        }
        if !json {
            for n in notes { Output.out(n) }
            Output.out("tracing \(proto.rawValue)/\(port)\(from.map { " from \($0.address)/\($0.length)" } ?? "") for up to \(timeout) s (\(count) packet\(count == 1 ? "" : "s")); send traffic now, Ctrl-C stops")
        }
        let start = nowMicros()
        let deadline = start + Int64(timeout) * 1_000_000
        var lastEvent = start
        var lost = false
        while traceStop == 0 && nowMicros() < deadline {
            let (events, dropped) = listener.read(timeoutMs: 100)
            lost = lost || dropped
            if !events.isEmpty {
                lastEvent = nowMicros()
                let before = report.packets.count
                let lines = report.add(events)
                if !json { for l in lines { Output.out(l) } }
                // A drop seen: the rules it named may be newer than the first read.
                if report.packets.count > before || report.packets.contains(where: { $0.blocked != nil }) {
                    if let b = report.packets.first(where: { $0.blocked != nil })?.blocked, b.event.kind == .rule,
                       report.rules[report.key(TraceReport.family(b.event.family), b.event.table, b.event.chain, b.event.handle ?? 0)] == nil,
                       let rules = try? nf.listAllRules() {
                        for r in rules { report.rules[report.key(r.family, r.table, r.chain, r.handle)] = r }
                    }
                }
            }
            // Enough packets, and a quiet moment for the replies (the guard may drop those).
            if report.originalsDone >= count && nowMicros() - lastEvent > 700_000 { break }
        }
        let v = report.verdict
        if json {
            Output.out(report.json.serialized())
        } else {
            if lost { Output.out("(some trace events were lost: the kernel's queue overflowed)") }
            if traceStop != 0 { Output.out("(stopped by a signal)") }
            Output.out(v.line)
        }
        return report.packets.isEmpty ? 1 : 0
    }

    static func number(_ text: String?, _ option: String, default value: Int, range: ClosedRange<Int>) throws(VirtPortError) -> Int {
        guard let text else { return value }
        guard let n = Int(text), range.contains(n) else {
            throw .invalid("trace: \(option) '\(Quoted.message(text))' is not a number in \(range.lowerBound)-\(range.upperBound)")
        }
        return n
    }
}
