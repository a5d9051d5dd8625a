/// A libvirt domain as read from the XML a hook receives (or `virsh dumpxml`).
public struct Domain: Sendable, Equatable {
    public var name: String
    public var uuid: String
    /// Every `<devices><interface>`, in document order.
    public var interfaces: [Interface]
    /// Our `urn:virtport:domain:1` metadata; nil when the domain has none.
    public var metadata: VirtPortMetadata?

    public init(name: String, uuid: String, interfaces: [Interface] = [], metadata: VirtPortMetadata? = nil) {
        self.name = name
        self.uuid = uuid
        self.interfaces = interfaces
        self.metadata = metadata
    }
}

/// One `<interface>` of a domain.
public struct Interface: Sendable, Equatable {
    /// The `type` attribute: network, bridge, direct, user, ethernet…
    public var type: String
    public var mac: MACAddress?
    /// `<source network=…>` (type network).
    public var sourceNetwork: String?
    /// `<source bridge=…>` (type bridge, or filled in by libvirt for type network while running).
    public var sourceBridge: String?
    /// `<target dev=…>`: the tap, present only while the domain runs (start/started/reconnect).
    public var targetDev: String?
    /// `<source portid=…>` for type network while running.
    public var portID: String?

    public init(type: String, mac: MACAddress? = nil, sourceNetwork: String? = nil, sourceBridge: String? = nil,
                targetDev: String? = nil, portID: String? = nil) {
        self.type = type
        self.mac = mac
        self.sourceNetwork = sourceNetwork
        self.sourceBridge = sourceBridge
        self.targetDev = targetDev
        self.portID = portID
    }
}

public enum IPProto: String, Sendable, Hashable, Comparable, CaseIterable {
    case tcp, udp, sctp
    /// IANA protocol number (the `meta l4proto` value).
    public var number: UInt8 {
        switch self {
        case .tcp: 6
        case .udp: 17
        case .sctp: 132
        }
    }
    public init?(number: UInt8) {
        switch number {
        case 6: self = .tcp
        case 17: self = .udp
        case 132: self = .sctp
        default: return nil
        }
    }
    public static func < (a: IPProto, b: IPProto) -> Bool { a.number < b.number }
}

/// An inclusive port range; `start == end` is one port.
public struct PortRange: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var start: UInt16
    public var end: UInt16
    public init(_ start: UInt16, _ end: UInt16) {
        self.start = start
        self.end = end
    }
    public var count: Int { Int(end) - Int(start) + 1 }
    public func overlaps(_ o: PortRange) -> Bool { start <= o.end && o.start <= end }
    public func contains(_ p: UInt16) -> Bool { start <= p && p <= end }
    public var description: String { start == end ? "\(start)" : "\(start)-\(end)" }
    public static func < (a: PortRange, b: PortRange) -> Bool { (a.start, a.end) < (b.start, b.end) }
}

/// The `<vp:virtport>` element of a domain's metadata.
public struct VirtPortMetadata: Sendable, Equatable {
    public var forwards: [ForwardSpec]
    public var guards: [GuardSpec]
    public init(forwards: [ForwardSpec] = [], guards: [GuardSpec] = []) {
        self.forwards = forwards
        self.guards = guards
    }
}

/// One `<vp:portForward>` as written, before planning.
public struct ForwardSpec: Sendable, Equatable {
    public var proto: IPProto
    /// `address=`: host listen address; nil means every local address.
    public var address: IPAddress?
    /// `dev=`: host interface the connection must arrive on.
    public var dev: String?
    /// `mac=`: which guest NIC.
    public var mac: MACAddress?
    /// `guest=`: the guest's address, when given explicitly.
    public var guest: IPAddress?
    public var ranges: [RangeSpec]
    /// The attributes rule kinds own (`ForwardAttributes`), by name, as their kinds parsed them.
    public var attributes = KindValues()
    public init(proto: IPProto, address: IPAddress? = nil, dev: String? = nil, mac: MACAddress? = nil,
                guest: IPAddress? = nil, ranges: [RangeSpec] = []) {
        self.proto = proto
        self.address = address
        self.dev = dev
        self.mac = mac
        self.guest = guest
        self.ranges = ranges
    }
}

/// One `<vp:range start= end= to= exclude=>`.
public struct RangeSpec: Sendable, Equatable {
    public var ports: PortRange
    /// Guest port of the first host port (nil: same as host).
    public var to: UInt16?
    public var exclude: Bool
    public init(ports: PortRange, to: UInt16? = nil, exclude: Bool = false) {
        self.ports = ports
        self.to = to
        self.exclude = exclude
    }
}

/// `<vp:guard mac= spoofing= ip= dhcpServer= routerAdvert= isolated=>`: bridge-port protection
/// (README "Guarding bridge ports"). `dhcpServer`/`routerAdvert` nil: follow `spoofing` (blocked
/// with it on, allowed with it off), so a guard without attributes is the full protection.
public struct GuardSpec: Sendable, Equatable {
    public var mac: MACAddress?
    public var spoofing: Bool
    public var isolated: Bool
    /// `ip=`: the only addresses the guest may use (link-local IPv6 aside); empty: resolved.
    public var addresses: [IPAddress]
    /// `dhcpServer=` allow (true) / block (false); nil: not written.
    public var dhcpServer: Bool?
    /// `routerAdvert=` allow (true) / block (false); nil: not written.
    public var routerAdvert: Bool?
    public init(mac: MACAddress? = nil, spoofing: Bool = true, isolated: Bool = false, addresses: [IPAddress] = [],
                dhcpServer: Bool? = nil, routerAdvert: Bool? = nil) {
        self.mac = mac
        self.spoofing = spoofing
        self.isolated = isolated
        self.addresses = addresses
        self.dhcpServer = dhcpServer
        self.routerAdvert = routerAdvert
    }
}

extension Interface {
    /// Whether `name` is an interface name virtport puts into its tables (`MetadataXML.isInterfaceName`).
    public static func isValidName(_ name: String) -> Bool { MetadataXML.isInterfaceName(name) }
}
