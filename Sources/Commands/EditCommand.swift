#if canImport(Glibc)
import Glibc
#endif
import Engine
import Journal
import Libvirt
import POSIX
import VirtPortCore

/// `virtport add DOMAIN PROTO HOSTPORT[-END][:GUESTPORT] [--address A] [--dev D] [--guest G] [--mac M] [--wait S]`
/// and `virtport remove DOMAIN PROTO HOSTPORT` (README "Live edits"): the domain's virtport
/// metadata edited through the libvirt API, checked first exactly as `prepare` checks a start
/// (grammar, policy, conflicts with running domains and bound host sockets), written to the
/// persistent definition and, when the domain runs, the live one, then applied at once with the
/// same code as a hook (`DomainSync`). A refusal exits 2 with one line and changes nothing; a
/// later step that fails puts the metadata back as it was. Each affected forward gets one line,
/// `applied:`, `pending:` (with what it lacks) or `removed:` (`EditOutcome`).
enum EditCommand {
    static func add(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let address = try args.option("--address"), dev = try args.option("--dev")
        let guest = try args.option("--guest"), mac = try args.option("--mac")
        let waitText = try args.option("--wait")
        // The kinds' attributes (`--source PREFIX`), repeatable; one value may also hold several words.
        var attributeValues: [(any ForwardAttribute, [String])] = []
        for a in ForwardAttributes.all where a.addOption != nil {
            attributeValues.append((a, try args.options("--" + a.name)))
        }
        guard let name = args.next(), let proto = args.next(), let ports = args.next() else {
            throw .invalid("usage: virtport add \(Usage.addSynopsis)")
        }
        try args.finish("add")
        var wait: Int?
        if let waitText {
            guard let w = Int(waitText), w >= 0, w <= 86_400 else {
                throw .invalid("add: --wait '\(Quoted.message(waitText))' is not a number of seconds (0-86400)")
            }
            wait = w
        }
        var forward = try MetadataEdit.forward(proto: proto, ports: ports, address: address, dev: dev, guest: guest, mac: mac)
        for (a, values) in attributeValues where !values.isEmpty {
            try a.parse(values.joined(separator: " "), into: &forward, path: "add", attribute: "--" + a.name)
        }
        return try edit(name, command: "add", wait: wait) { (e, interfaces) throws(VirtPortError) -> String in
            var f = forward
            // A NIC whose address the metadata already states: the new forward uses it.
            if let stated = EditOutcome.statedGuest(for: f, metadata: e.isEmpty ? nil : try e.metadata(), interfaces: interfaces) {
                f.guest = stated
            }
            e.add(f)
            return "\(proto) \(ports) added" + (f.guest != nil && guest == nil ? " (guest=\(f.guest!) as the metadata states for that NIC)" : "")
        }
    }

    static func remove(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        guard let name = args.next(), let protoText = args.next(), let portText = args.next() else {
            throw .invalid("usage: virtport remove DOMAIN PROTO HOSTPORT")
        }
        try args.finish("remove")
        guard let proto = IPProto(rawValue: protoText) else {
            throw .invalid("remove: protocol '\(Quoted.message(protoText))' is not tcp, udp or sctp")
        }
        guard let port = UInt16(portText), port > 0 else { throw .invalid("remove: '\(Quoted.message(portText))' is not a port (1-65535)") }
        return try edit(name, command: "remove") { (e, _) throws(VirtPortError) -> String in try e.remove(proto: proto, port: port) }
    }

    /// Reads, edits, checks, writes and applies; see the type's comment.
    /// - Parameter wait: `--wait SECONDS`: a forward still pending is planned again until it has
    ///   an address (then applied) or the time is up (exit 1).
    static func edit(_ name: String, command: String, wait: Int? = nil,
                     _ change: (inout MetadataEdit, [Interface]) throws(VirtPortError) -> String) throws(VirtPortError) -> Int32 {
        guard geteuid() == 0 else { throw .operational("\(command) edits libvirt domains, nftables and the journal (run as root)") }
        let config = try Config.load()
        let log = EventLog(config: config)
        guard !config.libvirtURI.isEmpty else {
            throw .invalid("\(command): libvirt_uri is \"\" in \(config.sourcePath): virtport cannot edit domains without libvirt")
        }
        guard let client = LibvirtClient.connect(uri: config.libvirtURI, readWrite: true) else {
            throw .operational("\(command) \(name): \(LibvirtClient.lastFailure)")
        }
        let d = try client.domain(named: name)
        let running = d.isActive, persistent = d.isPersistent
        let who = "domain '\(Quoted.message(name))' \(command)"
        do throws(VirtPortError) {
            // The live metadata is what runs; the definition may differ (virsh metadata --live):
            // each is edited on its own, and the change must make sense for both.
            var edits: [(live: Bool, before: [UInt8]?, after: MetadataEdit)] = []
            var what = ""
            var domain = try DomainXML.parse(try d.xml(inactive: !running))
            let resources = Resources.perProcess(config)
            let diagnostics = StandardErrorDiagnostics()
            // What the forwards were, to say what became of each (a metadata the planner refuses
            // counts as none: the edit is what fixes it).
            let before = (try? DomainSync.plan(domain, resources: resources, diagnostics: diagnostics))?.mappings ?? []
            for live in [false, true] where live ? running : persistent {
                let before = try d.metadata(uri: DomainXML.namespace, live: live)
                var e = try MetadataEdit(before)
                what = try change(&e, domain.interfaces)
                _ = try e.metadata()
                edits.append((live, before, e))
            }
            // Checked like prepare: the domain as it will be, against the policy, the journal and
            // the host's sockets.
            if let e = edits.last { domain.metadata = e.after.isEmpty ? nil : try e.after.metadata() }
            // A domain that does not run is checked too: a forward its next start would be refused for
            // is refused now.
            let checked = try DomainSync.check(domain, resources: resources, diagnostics: diagnostics)
            // Written: the definition first, then the live XML; a failure puts back what was written.
            var written: [(live: Bool, before: [UInt8]?)] = []
            func rollback() {
                for w in written.reversed() {
                    try? d.setMetadata(w.before.map { String(decoding: $0, as: UTF8.self) }, key: MetadataEdit.key,
                                       uri: DomainXML.namespace, live: w.live)
                }
            }
            var after = checked.mappings
            do {
                for e in edits {
                    try d.setMetadata(e.after.isEmpty ? nil : e.after.xml, key: MetadataEdit.key, uri: DomainXML.namespace, live: e.live)
                    written.append((e.live, e.before))
                }
                if running {
                    after = try DomainSync.apply(domain, reason: "virtport \(command)", resources: resources, diagnostics: diagnostics).mappings
                }
            } catch {
                rollback()
                throw error
            }
            let scope = running ? (persistent ? "definition and live domain" : "live domain") : "definition (not running: applies at its next start)"
            log.notice("edited: \(who): \(what) in the \(scope)")
            let lines = EditOutcome.lines(before: before, after: after, domain: name, running: running)
            for l in lines { Output.out(l.text) }
            if lines.isEmpty { Output.out("\(name): \(what) (\(scope)); no forward changed") }
            let pending = lines.filter { $0.state == .pending }.map(\.mapping)
            guard let wait, !pending.isEmpty else { return 0 }
            return waitApplied(d, name: name, pending: pending, seconds: wait, resources: resources, diagnostics: diagnostics)
        } catch {
            if error.code == .invalidInput { log.refused("\(who): \(error.message) (nothing changed)") }
            throw error
        }
    }

    /// `--wait`: plans the domain again every half second (a reservation or lease that appeared,
    /// a start of a domain that was not running) until every forward in `pending` has an address,
    /// then applies (idempotent: the agent may have done it already) and prints `applied:`.
    /// - Returns: 0 when all are applied, 1 when time ran out (one line saying which still wait).
    static func waitApplied(_ d: LibvirtDomain, name: String, pending: [Mapping], seconds: Int,
                            resources: Resources, diagnostics: any Diagnostics) -> Int32 {
        let deadline = nowMicros() + Int64(seconds) * 1_000_000
        var last = ""
        while true {
            do throws(VirtPortError) {
                if d.isActive {
                    let domain = try DomainXML.parse(try d.xml(inactive: false))
                    let plan = try DomainSync.plan(domain, resources: resources, diagnostics: diagnostics)
                    let done = pending.compactMap { p in plan.mappings.first { EditOutcome.sameSlot($0, p) && !$0.isPending } }
                    if done.count == pending.count {
                        try DomainSync.apply(domain, reason: "virtport add --wait", resources: resources, diagnostics: diagnostics)
                        for m in done { Output.out("applied: \(MappingText.describe(m)) (domain '\(Quoted.message(name))')") }
                        return 0
                    }
                }
            } catch {
                last = "; last try: \(error.message)"
            }
            if nowMicros() >= deadline { break }
            Thread.sleep(millis: 500)
        }
        let which = pending.map { MappingText.describe($0) }.joined(separator: ", ")
        Output.err("add: still pending after \(seconds) s: \(which)\(last)")
        return 1
    }
}
