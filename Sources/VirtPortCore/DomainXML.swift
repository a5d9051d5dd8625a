/// Reads a libvirt domain definition (hook stdin, `virsh dumpxml`, or the status file
/// `/run/libvirt/qemu/NAME.xml`, whose `<domstatus>` wraps the `<domain>`).
public enum DomainXML {
    /// The namespace URI of our metadata. Matched by URI, never by prefix.
    public static let namespace = "urn:virtport:domain:1"

    /// The namespace URI as bytes in UTF-8, UTF-16LE and UTF-16BE.
    static let needles: [[UInt8]] = {
        let utf8 = Array(namespace.utf8)
        return [utf8, utf8.flatMap { [$0, 0] }, utf8.flatMap { [0, $0] }]
    }()

    /// The longest needle: a scan over chunks keeps this many bytes minus one from the last chunk.
    public static let needleLength = namespace.utf8.count * 2

    /// Whether the input mentions our namespace at all: a substring search, so the hook can skip
    /// parsing for the many domains without virtport metadata. False positives are harmless
    /// (the parse then finds no metadata); libvirt writes the URI literally, so no false negatives.
    /// UTF-16 spellings count too: such a document is refused (`parse`) rather than skipped.
    public static func mentionsVirtPort(_ bytes: some Collection<UInt8>) -> Bool {
        let array = Array(bytes)
        return needles.contains { Bytes.find($0, in: array) != nil }
    }

    /// Parses domain XML into a `Domain`, including our metadata.
    ///
    /// The metadata counts only where the namespace URI is written literally in UTF-8 (what
    /// libvirt writes, and what the hook's substring search sees): a document that spells it
    /// with character references is read as having none, as the hook reads it. A document in
    /// another encoding that mentions the namespace is refused, in `plan` as in the hook.
    /// - Parameter requireUUID: the hook needs the `<uuid>` (the journal's key); `virtport plan`
    ///   does not (libvirt adds one at define time, so hand-written XML often has none): its
    ///   domain's `uuid` is then "".
    /// - Throws: `VirtPortError.invalid` with one line naming the element and attribute.
    public static func parse(_ bytes: [UInt8], requireUUID: Bool = true) throws(VirtPortError) -> Domain {
        let literal = Bytes.find(needles[0], in: bytes) != nil
        if !literal && mentionsVirtPort(bytes) {
            throw .invalid("domain XML: not UTF-8 (it spells \(namespace) in UTF-16); virtport reads metadata only from UTF-8 domain XML, as libvirt writes it")
        }
        let root = try SecureXML.parse(bytes, what: "domain XML", keep: literal ? reads : readsWithoutMetadata)
        let domain: ParsedElement
        switch (root.name, root.namespace) {
        case ("domain", nil):
            domain = root
        case ("domstatus", nil):
            guard let inner = root.child("domain") else {
                throw .invalid("domain XML: <domstatus> has no <domain> element")
            }
            domain = inner
        default:
            throw .invalid("domain XML: root element is <\(Quoted.message(root.qualifiedName))>, expected <domain> or <domstatus>")
        }
        return try parseDomain(domain, requireUUID: requireUUID)
    }

    /// The elements `parseDomain` reads (a status file's `<domstatus>` wraps the `<domain>`): the
    /// rest of the document, other applications' metadata included, is only tokenized (and
    /// checked) by libxml2, never built.
    static func reads(parent: SecureXML.Name, child: SecureXML.Name) -> Bool {
        if child.namespace == namespace {
            return parent.namespace == namespace || (parent.namespace == nil && parent.local == "metadata")
        }
        if child.namespace != nil || parent.namespace != nil { return false }
        return switch parent.local {
        case "domstatus": child.local == "domain"
        case "domain": child.local == "name" || child.local == "uuid" || child.local == "metadata" || child.local == "devices"
        case "devices": child.local == "interface"
        case "interface": child.local == "mac" || child.local == "source" || child.local == "target" || child.local == "actual"
        case "actual": child.local == "source"
        default: false
        }
    }

    /// `reads` without our metadata (a document that does not spell the namespace literally).
    static func readsWithoutMetadata(parent: SecureXML.Name, child: SecureXML.Name) -> Bool {
        child.namespace != namespace && reads(parent: parent, child: child)
    }

    static func parseDomain(_ e: ParsedElement, requireUUID: Bool = true) throws(VirtPortError) -> Domain {
        guard let name = e.child("name")?.trimmedText, !name.isEmpty else {
            throw .invalid("domain XML: <domain> has no <name>")
        }
        let uuid = e.child("uuid")?.trimmedText ?? ""
        if uuid.isEmpty && requireUUID {
            throw .invalid("domain XML: <domain> \(Quoted.message(name)) has no <uuid>")
        }
        var interfaces: [Interface] = []
        for (i, nic) in (e.child("devices")?.children("interface") ?? []).enumerated() {
            interfaces.append(try parseInterface(nic, path: "devices/interface[\(i + 1)]"))
        }
        var metadata: VirtPortMetadata?
        if let meta = e.child("metadata") {
            let ours = meta.children.filter { $0.namespace == namespace }
            for other in ours where other.name != "virtport" {
                throw .invalid("metadata: unknown element <\(Quoted.message(other.name))> in namespace \(namespace), expected <virtport>")
            }
            if ours.count > 1 {
                throw .invalid("metadata: \(ours.count) <virtport> elements in namespace \(namespace), expected one")
            }
            if let virtport = ours.first { metadata = try MetadataXML.parse(virtport) }
        }
        return Domain(name: name, uuid: uuid, interfaces: interfaces, metadata: metadata)
    }

    static func parseInterface(_ e: ParsedElement, path: String) throws(VirtPortError) -> Interface {
        var nic = Interface(type: e.attribute("type") ?? "")
        if let text = e.child("mac")?.attribute("address") {
            guard let mac = MACAddress(text) else {
                throw .invalid("\(path)/mac: address=\"\(Quoted.message(text))\" is not a MAC address")
            }
            nic.mac = mac
        }
        if let source = e.child("source") {
            nic.sourceNetwork = source.attribute("network")
            nic.sourceBridge = source.attribute("bridge")
            nic.portID = source.attribute("portid")
        }
        // The status file keeps the bridge of a type='network' NIC under <actual>.
        if nic.sourceBridge == nil {
            nic.sourceBridge = e.child("actual")?.child("source")?.attribute("bridge")
        }
        nic.targetDev = e.child("target")?.attribute("dev")
        return nic
    }
}

/// The grammar of `<virtport xmlns="urn:virtport:domain:1">` (docs/DESIGN.md "Metadata grammar"). Checks what one element
/// can tell on its own; the planner checks what needs the whole domain.
enum MetadataXML {
    static let ns = DomainXML.namespace
    /// Most `<range>` elements (includes and excludes) in one `<portForward>`: each exclude is
    /// applied to every run before it, so the planning work grows with the square of this.
    static let maxRangesPerForward = 256
    /// Most `<portForward>` and `<guard>` elements, counted while reading (the policy's
    /// `max_forwards_per_domain` is checked right after, before any range is planned).
    static let maxElements = 4096

    static func parse(_ e: ParsedElement) throws(VirtPortError) -> VirtPortMetadata {
        try checkAttributes(e, path: "virtport", allowed: [])
        var result = VirtPortMetadata()
        var forwardIndex = 0
        var guardIndex = 0
        for child in e.children where child.namespace == ns {
            switch child.name {
            case "portForward":
                forwardIndex += 1
                if forwardIndex + guardIndex > maxElements {
                    throw .invalid("virtport: more than \(maxElements) <portForward> and <guard> elements")
                }
                result.forwards.append(try parseForward(child, path: "portForward[\(forwardIndex)]"))
            case "guard":
                guardIndex += 1
                if forwardIndex + guardIndex > maxElements {
                    throw .invalid("virtport: more than \(maxElements) <portForward> and <guard> elements")
                }
                result.guards.append(try parseGuard(child, path: "guard[\(guardIndex)]"))
            default:
                throw unknownElement(child, in: "virtport", expected: "<portForward> or <guard>")
            }
        }
        return result
    }

    /// The core's attributes and the rule kinds' (`ForwardAttributes`).
    static let forwardAttributes = ["proto", "address", "dev", "mac", "guest"] + ForwardAttributes.names

    static func parseForward(_ e: ParsedElement, path: String) throws(VirtPortError) -> ForwardSpec {
        try checkAttributes(e, path: path, allowed: forwardAttributes)
        guard let protoText = e.attribute("proto") else {
            throw .invalid("\(path): missing proto= (tcp, udp or sctp)")
        }
        guard let proto = IPProto(rawValue: protoText) else {
            throw .invalid("\(path): proto=\"\(Quoted.message(protoText))\" is not tcp, udp or sctp")
        }
        var spec = ForwardSpec(proto: proto)
        if let text = e.attribute("address") {
            guard let address = IPAddress(text) else {
                throw .invalid("\(path): address=\"\(Quoted.message(text))\" is not an IP address")
            }
            if let why = Planner.unusableReason(address) {
                throw .invalid("\(path): address=\"\(Quoted.message(text))\" is \(why), not a host listen address (leave address= out for every local address)")
            }
            spec.address = address
        }
        if let dev = e.attribute("dev") {
            guard isInterfaceName(dev) else {
                throw .invalid("\(path): dev=\"\(Quoted.message(dev))\" is not a network interface name (1-15 of A-Z a-z 0-9 - _ .)")
            }
            spec.dev = dev
        }
        if let text = e.attribute("mac") {
            guard let mac = MACAddress(text) else {
                throw .invalid("\(path): mac=\"\(Quoted.message(text))\" is not a MAC address")
            }
            spec.mac = mac
        }
        if let text = e.attribute("guest") {
            guard let guest = IPAddress(text) else {
                throw .invalid("\(path): guest=\"\(Quoted.message(text))\" is not an IP address")
            }
            if let why = Planner.unusableReason(guest) {
                throw .invalid("\(path): guest=\"\(Quoted.message(text))\" is \(why), not a guest address")
            }
            spec.guest = guest
        }
        for a in ForwardAttributes.all {
            if let text = e.attribute(a.name) { try a.parse(text, into: &spec, path: path, attribute: a.name) }
            try a.check(spec, path: path)
        }
        var rangeIndex = 0
        for child in e.children where child.namespace == ns {
            guard child.name == "range" else {
                throw unknownElement(child, in: path, expected: "<range>")
            }
            rangeIndex += 1
            if rangeIndex > maxRangesPerForward {
                throw .invalid("\(path): more than \(maxRangesPerForward) <range> elements in one portForward")
            }
            spec.ranges.append(try parseRange(child, path: "\(path)/range[\(rangeIndex)]"))
        }
        return spec
    }

    static func parseRange(_ e: ParsedElement, path: String) throws(VirtPortError) -> RangeSpec {
        try checkAttributes(e, path: path, allowed: ["start", "end", "to", "exclude"])
        try checkNoChildren(e, path: path)
        guard let startText = e.attribute("start") else { throw .invalid("\(path): missing start=") }
        let start = try port(startText, path: path, attribute: "start")
        var end = start
        if let text = e.attribute("end") {
            end = try port(text, path: path, attribute: "end")
            guard end >= start else {
                throw .invalid("\(path): end=\"\(Quoted.message(text))\" is before start=\"\(Quoted.message(startText))\"")
            }
        }
        var spec = RangeSpec(ports: PortRange(start, end))
        if let text = e.attribute("exclude") {
            switch text {
            case "yes": spec.exclude = true
            case "no": spec.exclude = false
            default: throw .invalid("\(path): exclude=\"\(Quoted.message(text))\" is not yes or no")
            }
        }
        if let text = e.attribute("to") {
            let to = try port(text, path: path, attribute: "to")
            spec.to = to
        }
        try Planner.checkRange(spec, path: path)
        return spec
    }

    static func parseGuard(_ e: ParsedElement, path: String) throws(VirtPortError) -> GuardSpec {
        try checkAttributes(e, path: path, allowed: ["mac", "spoofing", "ip", "dhcpServer", "routerAdvert", "isolated"])
        try checkNoChildren(e, path: path)
        var spec = GuardSpec()
        if let text = e.attribute("mac") {
            guard let mac = MACAddress(text) else {
                throw .invalid("\(path): mac=\"\(Quoted.message(text))\" is not a MAC address")
            }
            spec.mac = mac
        }
        func choice(_ name: String, _ yes: String, _ no: String) throws(VirtPortError) -> Bool? {
            guard let text = e.attribute(name) else { return nil }
            if text == yes { return true }
            if text == no { return false }
            throw .invalid("\(path): \(name)=\"\(Quoted.message(text))\" is not \(yes) or \(no)")
        }
        spec.spoofing = try choice("spoofing", "on", "off") ?? true
        spec.isolated = try choice("isolated", "yes", "no") ?? false
        spec.dhcpServer = try choice("dhcpServer", "allow", "block")
        spec.routerAdvert = try choice("routerAdvert", "allow", "block")
        if let text = e.attribute("ip") {
            let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
            if words.isEmpty { throw .invalid("\(path): ip=\"\" names no address (leave ip= out to use the guest's reservation or lease)") }
            if words.count > maxGuardAddresses {
                throw .invalid("\(path): ip= names \(words.count) addresses, more than \(maxGuardAddresses)")
            }
            for word in words {
                guard let ip = IPAddress(word) else {
                    throw .invalid("\(path): ip=\"\(Quoted.message(word))\" is not an IPv4 or IPv6 address (a prefix is not allowed: name each address)")
                }
                if let why = Planner.unusableReason(ip) ?? (ip.isLinkLocal && ip.family == .ipv6 ? "link-local (always allowed: leave it out)" : nil) {
                    throw .invalid("\(path): ip=\"\(word)\" is \(why), not a guest address")
                }
                if spec.addresses.contains(ip) { throw .invalid("\(path): ip= names \(ip) twice") }
                spec.addresses.append(ip)
            }
        }
        if !spec.spoofing && !spec.addresses.isEmpty {
            throw .invalid("\(path): ip= with spoofing=\"off\" checks nothing (turn spoofing on, or leave ip= out)")
        }
        return spec
    }

    /// Most addresses one guard's `ip=` may name.
    static let maxGuardAddresses = 64

    /// A port: decimal digits only, no sign, space, leading zero or hex; 1-65535.
    static func port(_ text: String, path: String, attribute: String) throws(VirtPortError) -> UInt16 {
        let utf8 = Array(text.utf8)
        guard (1...5).contains(utf8.count), utf8[0] != UInt8(ascii: "0"),
              utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let value = Int(text), value <= 65535 else {
            throw .invalid("\(path): \(attribute)=\"\(Quoted.message(text))\" is not a port (1-65535)")
        }
        return UInt16(value)
    }

    /// Attributes without a namespace must be known; attributes in our namespace are unknown by
    /// definition (ours are unqualified); attributes of other namespaces are ignored.
    /// (`allowed` is an array: a handful of names, and a `Set` literal costs a hook more to build.)
    static func checkAttributes(_ e: ParsedElement, path: String, allowed: [String]) throws(VirtPortError) {
        for a in e.attributes {
            if a.namespace == nil && !allowed.contains(a.name) {
                let known = allowed.sorted().map { "\($0)=" }.joined(separator: " ")
                throw .invalid("\(path): unknown attribute \(Quoted.message(a.name))=" + (known.isEmpty ? "" : " (known: \(known))"))
            }
            if a.namespace == ns {
                throw .invalid("\(path): unknown attribute \(Quoted.message(a.name))= in namespace \(ns) (attributes of virtport elements take no prefix)")
            }
        }
    }

    static func checkNoChildren(_ e: ParsedElement, path: String) throws(VirtPortError) {
        if let child = e.children.first(where: { $0.namespace == ns }) {
            throw unknownElement(child, in: path, expected: "no child elements")
        }
    }

    static func unknownElement(_ e: ParsedElement, in path: String, expected: String) -> VirtPortError {
        .invalid("\(path): unknown element <\(Quoted.message(e.name))> in namespace \(ns) (expected \(expected))")
    }

    /// An interface name virtport puts into its maps: 1-15 bytes (IFNAMSIZ - 1) of ASCII letters,
    /// digits, `-`, `_` and `.`, not "." or "..". The kernel itself accepts more (anything but
    /// '/', ':', white space), but `nft list ruleset` prints the name between double quotes
    /// without escaping and reads a trailing `*` as a wildcard, so a quote, `*`, a backslash or a
    /// control character would make the saved ruleset (nftables.service, `nft -f`) fail to load.
    /// Names udev and the usual tools create (`enp3s0`, `br-lan`, `vlan.10`, `virbr0_nic`) pass.
    public static func isInterfaceName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...15).contains(bytes.count), name != ".", name != ".." else { return false }
        return bytes.allSatisfy { b in
            (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
                || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
                || b == UInt8(ascii: "-") || b == UInt8(ascii: "_") || b == UInt8(ascii: ".")
        }
    }
}
