/// A libvirt virtual network as read from its XML (network hook stdin, `virsh net-dumpxml`, or
/// the status file `/run/libvirt/network/NAME.xml`).
public struct NetworkDefinition: Sendable, Equatable {
    public var name: String
    public var uuid: String
    /// `<bridge name=…>`: virbr0 for `default`.
    public var bridge: String?
    /// `<forward mode=…>`: nat, route, open, bridge…; `<forward/>` without mode is nat (libvirt's
    /// default); nil when there is no `<forward>` (an isolated network).
    public var forwardMode: String?
    /// Every `<ip>`, in document order.
    public var ips: [NetworkIP]
    /// The `<networkport>` of a network hook's `<hookData>` (port-created/port-deleted), if any.
    public var port: NetworkPort?

    public init(name: String, uuid: String, bridge: String? = nil, forwardMode: String? = nil,
                ips: [NetworkIP] = [], port: NetworkPort? = nil) {
        self.name = name
        self.uuid = uuid
        self.bridge = bridge
        self.forwardMode = forwardMode
        self.ips = ips
        self.port = port
    }

    /// The static DHCP reservation for `mac`: the first `<host mac= ip=>` of `family` (any
    /// family when nil, IPv4 first).
    public func reservation(for mac: MACAddress, family: Family? = nil) -> IPAddress? {
        let hosts = ips.flatMap(\.hosts).filter { $0.mac == mac && (family == nil || $0.ip.family == family) }
        return hosts.first { $0.ip.family == .ipv4 }?.ip ?? hosts.first?.ip
    }
}

/// One `<ip address= netmask=|prefix= family=>` of a network.
public struct NetworkIP: Sendable, Equatable {
    /// The host side address of the network (the bridge's address), e.g. 192.168.122.1.
    public var address: IPAddress
    public var prefix: Int
    /// Static `<dhcp><host>` reservations that name a MAC (IPv6 hosts naming only `id=` or
    /// `name=` are left out: nothing can match them to a NIC).
    public var hosts: [DHCPHost]

    public init(address: IPAddress, prefix: Int, hosts: [DHCPHost] = []) {
        self.address = address
        self.prefix = prefix
        self.hosts = hosts
    }

    public var family: Family { address.family }
    public var subnet: IPPrefix { IPPrefix(address, prefix: prefix) }
}

/// `<host mac= ip= name=>` of a network's `<dhcp>`.
public struct DHCPHost: Sendable, Equatable {
    public var mac: MACAddress
    public var ip: IPAddress
    public var name: String?
    public init(mac: MACAddress, ip: IPAddress, name: String? = nil) {
        self.mac = mac
        self.ip = ip
        self.name = name
    }
}

/// An address prefix (`192.168.122.0/24`); host bits are cleared. (Not named `Subnet`: the
/// Netfilter module has its own `Subnet`, and Engine imports both.)
public struct IPPrefix: Sendable, Hashable, CustomStringConvertible {
    public let network: IPAddress
    public let prefix: Int

    /// - Parameter prefix: clamped to 0…32 (IPv4) or 0…128 (IPv6).
    public init(_ address: IPAddress, prefix: Int) {
        let bits = address.bytes.count * 8
        let p = min(max(prefix, 0), bits)
        var bytes = address.bytes
        for i in bytes.indices {
            let keep = min(max(p - i * 8, 0), 8)
            bytes[i] &= keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
        }
        self.network = IPAddress(bytes: bytes)!
        self.prefix = p
    }

    public var family: Family { network.family }

    /// "192.168.1.0/24" or "2001:db8::/64" (host bits must be zero, the prefix length plain
    /// decimal and in range); nil otherwise.
    public init?(parsing text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPAddress(String(parts[0])),
              (1...3).contains(parts[1].utf8.count), parts[1].utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let length = Int(parts[1]), length <= address.bytes.count * 8 else { return nil }
        self.init(address, prefix: length)
        guard network == address else { return nil }
    }

    public func contains(_ ip: IPAddress) -> Bool {
        ip.family == family && IPPrefix(ip, prefix: prefix).network == network
    }

    public var description: String { "\(network)/\(prefix)" }
}

/// `<networkport>` of a network hook's `<hookData>`: which domain's NIC is being plugged.
public struct NetworkPort: Sendable, Equatable {
    public var uuid: String?
    public var ownerName: String?
    public var ownerUUID: String?
    public var mac: MACAddress?
    /// `<plug type='network' bridge=…>`.
    public var bridge: String?

    public init(uuid: String? = nil, ownerName: String? = nil, ownerUUID: String? = nil, mac: MACAddress? = nil,
                bridge: String? = nil) {
        self.uuid = uuid
        self.ownerName = ownerName
        self.ownerUUID = ownerUUID
        self.mac = mac
        self.bridge = bridge
    }
}
