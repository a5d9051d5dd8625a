/// Reads a libvirt domain definition (hook stdin, `virsh dumpxml`, or the status file
/// `/run/libvirt/qemu/NAME.xml`, whose `<domstatus>` wraps the `<domain>`).
public enum DomainXML {
    /// The namespace URI of our metadata. Matched by URI, never by prefix.
    public static let namespace = "urn:virtport:domain:1"

    /// Whether the input mentions our namespace at all: a substring search, so the hook can skip
    /// parsing for the many domains without virtport metadata. False positives are harmless
    /// (the parse then finds no metadata); libvirt writes the URI literally, so no false negatives.
    public static func mentionsVirtPort(_ bytes: [UInt8]) -> Bool {
        Bytes.find(Array(namespace.utf8), in: bytes) != nil
    }

    /// Parses domain XML into a `Domain`, including our metadata.
    /// - Parameter requireUUID: the hook needs the `<uuid>` (the journal's key); `virtport plan`
    ///   does not (libvirt adds one at define time, so hand-written XML often has none): its
    ///   domain's `uuid` is then "".
    /// - Throws: `VirtPortError.invalid` with one line naming the element and attribute.
    public static func parse(_ bytes: [UInt8], requireUUID: Bool = true) throws(VirtPortError) -> Domain {
        let root = try SecureXML.parse(bytes, what: "domain XML", keep: reads)
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
            throw .invalid("domain XML: root element is <\(root.qualifiedName)>, expected <domain> or <domstatus>")
        }
        return try parseDomain(domain, requireUUID: requireUUID)
    }

    /// The libvirt elements `parseDomain` reads (a status file's `<domstatus>` wraps the `<domain>`);
    /// the rest of the tree is not copied out of libxml2.
    static func reads(parent: String, child: String) -> Bool {
        switch parent {
        case "domstatus": child == "domain"
        case "domain": child == "name" || child == "uuid" || child == "metadata" || child == "devices"
        case "devices": child == "interface"
        default: true
        }
    }

    static func parseDomain(_ e: ParsedElement, requireUUID: Bool = true) throws(VirtPortError) -> Domain {
        guard let name = e.child("name")?.trimmedText, !name.isEmpty else {
            throw .invalid("domain XML: <domain> has no <name>")
        }
        let uuid = e.child("uuid")?.trimmedText ?? ""
        if uuid.isEmpty && requireUUID {
            throw .invalid("domain XML: <domain> \(name) has no <uuid>")
        }
        var interfaces: [Interface] = []
        for (i, nic) in (e.child("devices")?.children("interface") ?? []).enumerated() {
            interfaces.append(try parseInterface(nic, path: "devices/interface[\(i + 1)]"))
        }
        var metadata: VirtPortMetadata?
        if let meta = e.child("metadata") {
            let ours = meta.children.filter { $0.namespace == namespace }
            for other in ours where other.name != "virtport" {
                throw .invalid("metadata: unknown element <\(other.name)> in namespace \(namespace), expected <virtport>")
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
                throw .invalid("\(path)/mac: address=\"\(text)\" is not a MAC address")
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

    static func parse(_ e: ParsedElement) throws(VirtPortError) -> VirtPortMetadata {
        try checkAttributes(e, path: "virtport", allowed: [])
        var result = VirtPortMetadata()
        var forwardIndex = 0
        var guardIndex = 0
        for child in e.children where child.namespace == ns {
            switch child.name {
            case "portForward":
                forwardIndex += 1
                result.forwards.append(try parseForward(child, path: "portForward[\(forwardIndex)]"))
            case "guard":
                guardIndex += 1
                result.guards.append(try parseGuard(child, path: "guard[\(guardIndex)]"))
            default:
                throw unknownElement(child, in: "virtport", expected: "<portForward> or <guard>")
            }
        }
        return result
    }

    static func parseForward(_ e: ParsedElement, path: String) throws(VirtPortError) -> ForwardSpec {
        try checkAttributes(e, path: path, allowed: ["proto", "address", "dev", "mac", "guest"])
        guard let protoText = e.attribute("proto") else {
            throw .invalid("\(path): missing proto= (tcp, udp or sctp)")
        }
        guard let proto = IPProto(rawValue: protoText) else {
            throw .invalid("\(path): proto=\"\(protoText)\" is not tcp, udp or sctp")
        }
        var spec = ForwardSpec(proto: proto)
        if let text = e.attribute("address") {
            guard let address = IPAddress(text) else {
                throw .invalid("\(path): address=\"\(text)\" is not an IP address")
            }
            if address.isUnspecified || address.isMulticast {
                throw .invalid("\(path): address=\"\(text)\" is not a host listen address (leave address= out for every local address)")
            }
            spec.address = address
        }
        if let dev = e.attribute("dev") {
            guard isInterfaceName(dev) else {
                throw .invalid("\(path): dev=\"\(dev)\" is not a network interface name")
            }
            spec.dev = dev
        }
        if let text = e.attribute("mac") {
            guard let mac = MACAddress(text) else {
                throw .invalid("\(path): mac=\"\(text)\" is not a MAC address")
            }
            spec.mac = mac
        }
        if let text = e.attribute("guest") {
            guard let guest = IPAddress(text) else {
                throw .invalid("\(path): guest=\"\(text)\" is not an IP address")
            }
            if let why = Planner.unusableGuestReason(guest) {
                throw .invalid("\(path): guest=\"\(text)\" is \(why), not a guest address")
            }
            spec.guest = guest
        }
        var rangeIndex = 0
        for child in e.children where child.namespace == ns {
            guard child.name == "range" else {
                throw unknownElement(child, in: path, expected: "<range>")
            }
            rangeIndex += 1
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
                throw .invalid("\(path): end=\"\(text)\" is before start=\"\(startText)\"")
            }
        }
        var spec = RangeSpec(ports: PortRange(start, end))
        if let text = e.attribute("exclude") {
            switch text {
            case "yes": spec.exclude = true
            case "no": spec.exclude = false
            default: throw .invalid("\(path): exclude=\"\(text)\" is not yes or no")
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
        try checkAttributes(e, path: path, allowed: ["mac", "spoofing", "isolated"])
        try checkNoChildren(e, path: path)
        var spec = GuardSpec()
        if let text = e.attribute("mac") {
            guard let mac = MACAddress(text) else {
                throw .invalid("\(path): mac=\"\(text)\" is not a MAC address")
            }
            spec.mac = mac
        }
        if let text = e.attribute("spoofing") {
            switch text {
            case "on": spec.spoofing = true
            case "off": spec.spoofing = false
            default: throw .invalid("\(path): spoofing=\"\(text)\" is not on or off")
            }
        }
        if let text = e.attribute("isolated") {
            switch text {
            case "yes": spec.isolated = true
            case "no": spec.isolated = false
            default: throw .invalid("\(path): isolated=\"\(text)\" is not yes or no")
            }
        }
        return spec
    }

    /// A port: decimal digits only, no sign, space, leading zero or hex; 1-65535.
    static func port(_ text: String, path: String, attribute: String) throws(VirtPortError) -> UInt16 {
        let utf8 = Array(text.utf8)
        guard (1...5).contains(utf8.count), utf8[0] != UInt8(ascii: "0"),
              utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let value = Int(text), value <= 65535 else {
            throw .invalid("\(path): \(attribute)=\"\(text)\" is not a port (1-65535)")
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
                throw .invalid("\(path): unknown attribute \(a.name)=" + (known.isEmpty ? "" : " (known: \(known))"))
            }
            if a.namespace == ns {
                throw .invalid("\(path): unknown attribute \(a.name)= in namespace \(ns) (attributes of virtport elements take no prefix)")
            }
        }
    }

    static func checkNoChildren(_ e: ParsedElement, path: String) throws(VirtPortError) {
        if let child = e.children.first(where: { $0.namespace == ns }) {
            throw unknownElement(child, in: path, expected: "no child elements")
        }
    }

    static func unknownElement(_ e: ParsedElement, in path: String, expected: String) -> VirtPortError {
        .invalid("\(path): unknown element <\(e.name)> in namespace \(ns) (expected \(expected))")
    }

    /// Linux interface names: 1-15 bytes, no '/', ':', white space, not "." or "..".
    static func isInterfaceName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...15).contains(bytes.count), name != ".", name != ".." else { return false }
        return bytes.allSatisfy { $0 > 0x20 && $0 != 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }
    }
}
