/// `virtport add` / `remove` (README "Live edits"): a domain's virtport metadata element as libvirt
/// returns it (`virDomainGetMetadata`), edited as a tree and written back whole in one canonical
/// form (`<virtport xmlns="urn:virtport:domain:1">`, stored by `virDomainSetMetadata` with key
/// `vp`). Elements the edit does not touch — other forwards, guards — are kept as they were,
/// attribute for attribute, so an edit never changes what it was not asked to.
public struct MetadataEdit: Sendable {
    /// The prefix libvirt writes our element with.
    public static let key = "vp"

    private var root: ParsedElement

    /// - Parameter element: the current metadata element, nil when the domain has none.
    /// - Throws: `.invalid` for a metadata element that does not parse or is not ours.
    public init(_ element: [UInt8]?) throws(VirtPortError) {
        guard let element else {
            root = ParsedElement(name: "virtport", namespace: DomainXML.namespace, prefix: Self.key, attributes: [],
                                 children: [], text: "", line: 0)
            return
        }
        var parsed = try SecureXML.parse(element, what: "the domain's virtport metadata")
        // libvirt hands the element back with every namespace stripped (measured, libvirt 9.0):
        // an unqualified tree is ours throughout.
        if parsed.namespace == nil { Self.adopt(&parsed) }
        guard parsed.name == "virtport", parsed.namespace == DomainXML.namespace else {
            throw .invalid("the domain's virtport metadata: root element is <\(Quoted.message(parsed.qualifiedName))>")
        }
        root = parsed
    }

    private static func adopt(_ e: inout ParsedElement) {
        if e.namespace == nil { e.namespace = DomainXML.namespace }
        for i in e.children.indices { adopt(&e.children[i]) }
    }

    /// The metadata as written now, checked by the same grammar as a hook's.
    public func metadata() throws(VirtPortError) -> VirtPortMetadata { try MetadataXML.parse(root) }

    /// Whether anything is left (an empty element is removed rather than written).
    public var isEmpty: Bool { root.children.isEmpty }

    /// The forward of `virtport add`'s operands: `PROTO HOSTPORT[-END][:GUESTPORT]` and the
    /// options, with the grammar's strictness (one line naming the operand that is wrong).
    public static func forward(proto: String, ports: String, address: String?, dev: String?, guest: String?,
                               mac: String?) throws(VirtPortError) -> ForwardSpec {
        guard let p = IPProto(rawValue: proto) else { throw .invalid("add: protocol '\(Quoted.message(proto))' is not tcp, udp or sctp") }
        let (hostText, guestText) = split(ports, at: ":")
        let (startText, endText) = split(hostText, at: "-")
        let start = try MetadataXML.port(startText, path: "add", attribute: "HOSTPORT")
        let end = try endText.map { (t) throws(VirtPortError) in try MetadataXML.port(t, path: "add", attribute: "END") } ?? start
        guard end >= start else { throw .invalid("add: host port range \(start)-\(end) ends before it starts") }
        let to = try guestText.map { (t) throws(VirtPortError) in try MetadataXML.port(t, path: "add", attribute: "GUESTPORT") }
        if let to, Int(to) + Int(end - start) > 65535 {
            throw .invalid("add: guest ports \(to)-\(Int(to) + Int(end - start)) go past 65535")
        }
        func parsed<T>(_ text: String?, _ what: String, _ make: (String) -> T?) throws(VirtPortError) -> T? {
            guard let text else { return nil }
            guard let v = make(text) else { throw .invalid("add: --\(what) '\(Quoted.message(text))' is not valid") }
            return v
        }
        if let dev, !MetadataXML.isInterfaceName(dev) { throw .invalid("add: --dev '\(Quoted.message(dev))' is not an interface name") }
        return ForwardSpec(proto: p, address: try parsed(address, "address", IPAddress.init), dev: dev,
                           mac: try parsed(mac, "mac", MACAddress.init), guest: try parsed(guest, "guest", IPAddress.init),
                           ranges: [RangeSpec(ports: PortRange(start, end), to: to == start ? nil : to)])
    }

    private static func split(_ s: String, at c: Character) -> (String, String?) {
        guard let i = s.firstIndex(of: c) else { return (s, nil) }
        return (String(s[..<i]), String(s[s.index(after: i)...]))
    }

    /// Appends one `<vp:portForward>` with one range.
    public mutating func add(_ f: ForwardSpec) {
        var attrs = [("proto", f.proto.rawValue)]
        if let a = f.address { attrs.append(("address", "\(a)")) }
        if let d = f.dev { attrs.append(("dev", d)) }
        if let m = f.mac { attrs.append(("mac", "\(m)")) }
        if let g = f.guest { attrs.append(("guest", "\(g)")) }
        for a in ForwardAttributes.all { if let t = a.text(f) { attrs.append((a.name, t)) } }
        let ranges = f.ranges.map { r -> ParsedElement in
            var ra = [("start", "\(r.ports.start)")]
            if r.ports.end != r.ports.start { ra.append(("end", "\(r.ports.end)")) }
            if let to = r.to { ra.append(("to", "\(to)")) }
            if r.exclude { ra.append(("exclude", "yes")) }
            return Self.element("range", ra, [])
        }
        root.children.append(Self.element("portForward", attrs, ranges))
    }

    /// Removes host port `port` of `proto`: a range that starts there goes whole, as `add` created
    /// it (with its forward when no range is left in it); a port inside a longer range is excluded
    /// from it (`<vp:range start=P exclude="yes"/>`).
    /// - Returns: a description of what changed.
    /// - Throws: `.invalid` when no forward of the metadata has that host port.
    public mutating func remove(proto: IPProto, port: UInt16) throws(VirtPortError) -> String {
        let specs = try metadata().forwards
        var f = -1
        for (i, child) in root.children.enumerated() where child.namespace == DomainXML.namespace && child.name == "portForward" {
            f += 1
            let spec = specs[f]
            guard spec.proto == proto else { continue }
            let includes = spec.ranges.indices.filter { !spec.ranges[$0].exclude && spec.ranges[$0].ports.contains(port) }
            guard let r = includes.first else { continue }
            // The range's element among the forward's element children (specs keep their order).
            let rangeElements = child.children.indices.filter {
                child.children[$0].namespace == DomainXML.namespace && child.children[$0].name == "range"
            }
            let range = spec.ranges[r]
            if range.ports.start == port {
                root.children[i].children.remove(at: rangeElements[r])
                let left = root.children[i].children.contains { $0.name == "range" && $0.attribute("exclude") != "yes" }
                if !left { root.children.remove(at: i) }
                return "host port\(range.ports.count > 1 ? "s" : "") \(proto.rawValue)/\(range.ports) removed"
            }
            root.children[i].children.append(Self.element("range", [("start", "\(port)"), ("exclude", "yes")], []))
            return "host port \(proto.rawValue)/\(port) excluded from range \(range.ports)"
        }
        throw .invalid("no \(proto.rawValue) forward of host port \(port) in the domain's metadata")
    }

    /// The element as XML text for `virDomainSetMetadata`: our namespace as the default one. libvirt
    /// declares `key` itself on the root (and fails when the text already declares that prefix);
    /// the children stay in the default namespace, which is ours: the same elements by URI.
    public var xml: String {
        var out = ""
        Self.write(root, into: &out, depth: 0)
        return out
    }

    private static func element(_ name: String, _ attributes: [(String, String)], _ children: [ParsedElement]) -> ParsedElement {
        ParsedElement(name: name, namespace: DomainXML.namespace, prefix: key,
                      attributes: attributes.map { .init(name: $0.0, namespace: nil, value: $0.1) },
                      children: children, text: "", line: 0)
    }

    private static func write(_ e: ParsedElement, into out: inout String, depth: Int) {
        out += String(repeating: "  ", count: depth) + "<\(e.name)"
        if depth == 0 { out += " xmlns=\"\(DomainXML.namespace)\"" }
        for a in e.attributes where a.namespace == nil { out += " \(a.name)=\"\(escape(a.value))\"" }
        let kids = e.children.filter { $0.namespace == DomainXML.namespace }
        if kids.isEmpty {
            out += "/>\n"
            return
        }
        out += ">\n"
        for c in kids { write(c, into: &out, depth: depth + 1) }
        out += String(repeating: "  ", count: depth) + "</\(e.name)>\n"
    }

    private static func escape(_ s: String) -> String {
        Quoted.replacing(s, ["&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"])
    }
}
