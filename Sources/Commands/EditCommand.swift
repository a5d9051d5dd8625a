#if canImport(Glibc)
import Glibc
#endif
import Engine
import Libvirt
import POSIX
import VirtPortCore

/// `virtport add DOMAIN PROTO HOSTPORT[-END][:GUESTPORT] [--address A] [--dev D] [--guest G] [--mac M]`
/// and `virtport remove DOMAIN PROTO HOSTPORT` (README "Live edits"): the domain's virtport
/// metadata edited through the libvirt API, checked first exactly as `prepare` checks a start
/// (grammar, policy, conflicts with running domains and bound host sockets), written to the
/// persistent definition and, when the domain runs, the live one, then applied at once with the
/// same code as a hook (`DomainSync`). A refusal exits 2 with one line and changes nothing; a
/// later step that fails puts the metadata back as it was.
enum EditCommand {
    static func add(_ args: inout Arguments) throws(VirtPortError) -> Int32 {
        let address = try args.option("--address"), dev = try args.option("--dev")
        let guest = try args.option("--guest"), mac = try args.option("--mac")
        guard let name = args.next(), let proto = args.next(), let ports = args.next() else {
            throw .invalid("usage: virtport add DOMAIN PROTO HOSTPORT[-END][:GUESTPORT] [--address A] [--dev D] [--guest G] [--mac M]")
        }
        try args.finish("add")
        let forward = try MetadataEdit.forward(proto: proto, ports: ports, address: address, dev: dev, guest: guest, mac: mac)
        return try edit(name, command: "add") { (e) throws(VirtPortError) -> String in
            e.add(forward)
            return "\(proto) \(ports) added"
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
        return try edit(name, command: "remove") { (e) throws(VirtPortError) -> String in try e.remove(proto: proto, port: port) }
    }

    /// Reads, edits, checks, writes and applies; see the type's comment.
    static func edit(_ name: String, command: String,
                     _ change: (inout MetadataEdit) throws(VirtPortError) -> String) throws(VirtPortError) -> Int32 {
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
            for live in [false, true] where live ? running : persistent {
                let before = try d.metadata(uri: DomainXML.namespace, live: live)
                var e = try MetadataEdit(before)
                what = try change(&e)
                _ = try e.metadata()
                edits.append((live, before, e))
            }
            // Checked like prepare: the domain as it will be, against the policy, the journal and
            // the host's sockets.
            var domain = try DomainXML.parse(try d.xml(inactive: !running))
            if let e = edits.last { domain.metadata = e.after.isEmpty ? nil : try e.after.metadata() }
            let resources = Resources.perProcess(config)
            let diagnostics = StandardErrorDiagnostics()
            // A domain that does not run is checked too: a forward its next start would be refused for
            // is refused now.
            try DomainSync.check(domain, resources: resources, diagnostics: diagnostics)
            // Written: the definition first, then the live XML; a failure puts back what was written.
            var written: [(live: Bool, before: [UInt8]?)] = []
            func rollback() {
                for w in written.reversed() {
                    try? d.setMetadata(w.before.map { String(decoding: $0, as: UTF8.self) }, key: MetadataEdit.key,
                                       uri: DomainXML.namespace, live: w.live)
                }
            }
            do {
                for e in edits {
                    try d.setMetadata(e.after.isEmpty ? nil : e.after.xml, key: MetadataEdit.key, uri: DomainXML.namespace, live: e.live)
                    written.append((e.live, e.before))
                }
                if running {
                    try DomainSync.apply(domain, reason: "virtport \(command)", resources: resources, diagnostics: diagnostics)
                }
            } catch {
                rollback()
                throw error
            }
            let scope = running ? (persistent ? "definition and live domain" : "live domain") : "definition (not running: applies at its next start)"
            log.notice("edited: \(who): \(what) in the \(scope)")
            Output.out("\(name): \(what) (\(scope))")
            return 0
        } catch {
            if error.code == .invalidInput { log.refused("\(who): \(error.message) (nothing changed)") }
            throw error
        }
    }
}
