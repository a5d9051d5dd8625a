/// Reads libvirt network XML: a bare `<network>`, the network hook's `<hookData>` (with its
/// `<networkport>`), or the status file's `<networkstatus>`.
public enum NetworkXML {
    /// - Throws: `VirtPortError.invalid` with one line naming the element and attribute.
    public static func parse(_ bytes: [UInt8]) throws(VirtPortError) -> NetworkDefinition {
        let root = try SecureXML.parse(bytes, what: "network XML")
        switch (root.name, root.namespace) {
        case ("network", nil):
            return try parseNetwork(root)
        case ("hookData", nil), ("networkstatus", nil):
            guard let network = root.child("network") else {
                throw .invalid("network XML: <\(root.name)> has no <network> element")
            }
            var result = try parseNetwork(network)
            if let port = root.child("networkport") { result.port = try parsePort(port) }
            return result
        default:
            throw .invalid("network XML: root element is <\(Quoted.message(root.qualifiedName))>, expected <network>, <hookData> or <networkstatus>")
        }
    }

    static func parseNetwork(_ e: ParsedElement) throws(VirtPortError) -> NetworkDefinition {
        guard let name = e.child("name")?.trimmedText, !name.isEmpty else {
            throw .invalid("network XML: <network> has no <name>")
        }
        var net = NetworkDefinition(name: name, uuid: e.child("uuid")?.trimmedText ?? "")
        net.bridge = e.child("bridge")?.attribute("name")
        if let forward = e.child("forward") { net.forwardMode = forward.attribute("mode") ?? "nat" }
        for (i, ip) in e.children("ip").enumerated() {
            net.ips.append(try parseIP(ip, path: "network \(Quoted.message(name)): ip[\(i + 1)]"))
        }
        return net
    }

    static func parseIP(_ e: ParsedElement, path: String) throws(VirtPortError) -> NetworkIP {
        guard let text = e.attribute("address") else { throw .invalid("\(path): missing address=") }
        guard let address = IPAddress(text) else {
            throw .invalid("\(path): address=\"\(Quoted.message(text))\" is not an IP address")
        }
        if let family = e.attribute("family") {
            guard family == (address.family == .ipv4 ? "ipv4" : "ipv6") else {
                throw .invalid("\(path): family=\"\(Quoted.message(family))\" does not match address=\"\(Quoted.message(text))\"")
            }
        }
        let prefix: Int
        if let p = e.attribute("prefix") {
            guard let value = Int(p), value >= 0, value <= address.bytes.count * 8,
                  p.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
                throw .invalid("\(path): prefix=\"\(Quoted.message(p))\" is not a prefix length")
            }
            prefix = value
        } else if let mask = e.attribute("netmask") {
            guard let m = IPAddress(mask), m.family == .ipv4, address.family == .ipv4,
                  let length = prefixLength(m) else {
                throw .invalid("\(path): netmask=\"\(Quoted.message(mask))\" is not an IPv4 netmask")
            }
            prefix = length
        } else if address.family == .ipv6 {
            prefix = 64
        } else {
            // libvirt's default for an IPv4 address without netmask: the classful prefix.
            prefix = address.bytes[0] < 128 ? 8 : address.bytes[0] < 192 ? 16 : 24
        }
        var ip = NetworkIP(address: address, prefix: prefix)
        for (j, host) in (e.child("dhcp")?.children("host") ?? []).enumerated() {
            let hostPath = "\(path)/dhcp/host[\(j + 1)]"
            guard let macText = host.attribute("mac") else { continue }  // IPv6 id=/name= hosts
            guard let mac = MACAddress(macText) else {
                throw .invalid("\(hostPath): mac=\"\(Quoted.message(macText))\" is not a MAC address")
            }
            guard let ipText = host.attribute("ip") else { continue }  // name-only entry: no address
            guard let hostIP = IPAddress(ipText) else {
                throw .invalid("\(hostPath): ip=\"\(Quoted.message(ipText))\" is not an IP address")
            }
            ip.hosts.append(DHCPHost(mac: mac, ip: hostIP, name: host.attribute("name")))
        }
        return ip
    }

    static func parsePort(_ e: ParsedElement) throws(VirtPortError) -> NetworkPort {
        var port = NetworkPort(uuid: e.child("uuid")?.trimmedText)
        if let owner = e.child("owner") {
            port.ownerName = owner.child("name")?.trimmedText
            port.ownerUUID = owner.child("uuid")?.trimmedText
        }
        if let text = e.child("mac")?.attribute("address") {
            guard let mac = MACAddress(text) else {
                throw .invalid("networkport/mac: address=\"\(Quoted.message(text))\" is not a MAC address")
            }
            port.mac = mac
        }
        port.bridge = e.child("plug")?.attribute("bridge")
        return port
    }

    /// Prefix length of a contiguous IPv4 netmask, nil for 255.0.255.0 and the like.
    static func prefixLength(_ mask: IPAddress) -> Int? {
        let value = mask.bytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let length = value.leadingOneBitCount
        return value == (length == 0 ? 0 : ~UInt32(0) << (32 - length)) ? length : nil
    }
}

private extension UInt32 {
    var leadingOneBitCount: Int { (~self).leadingZeroBitCount }
}
