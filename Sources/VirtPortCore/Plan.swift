/// Where a mapping's guest address came from (docs/DESIGN.md: first that answers).
public enum GuestSource: String, Sendable, Hashable {
    case attribute = "guest-attribute"
    case reservation = "dhcp-reservation"
    case lease = "dhcp-lease"
    /// No source answered yet: recorded, not in the kernel; the agent completes it.
    case pending
}

/// One resolved forward: a contiguous host port range to a guest port range of the same length.
/// This is the unit the journal stores and the kernel receives (expanded to one element per port).
public struct Mapping: Sendable, Hashable {
    public var proto: IPProto
    /// nil: every local address of the family.
    public var hostAddress: IPAddress?
    /// Host interface the connection must arrive on, nil: any.
    public var dev: String?
    public var hostPorts: PortRange
    /// nil while pending.
    public var guestAddress: IPAddress?
    public var guestPortStart: UInt16
    /// The guest NIC this forward targets.
    public var mac: MACAddress?
    /// libvirt network of that NIC (type network), if any.
    public var network: String?
    public var guestSource: GuestSource

    public init(proto: IPProto, hostAddress: IPAddress?, dev: String?, hostPorts: PortRange,
                guestAddress: IPAddress?, guestPortStart: UInt16, mac: MACAddress?, network: String?,
                guestSource: GuestSource) {
        self.proto = proto
        self.hostAddress = hostAddress
        self.dev = dev
        self.hostPorts = hostPorts
        self.guestAddress = guestAddress
        self.guestPortStart = guestPortStart
        self.mac = mac
        self.network = network
        self.guestSource = guestSource
    }

    public var guestPorts: PortRange {
        PortRange(guestPortStart, UInt16(Int(guestPortStart) + hostPorts.count - 1))
    }
    /// The DNAT family: the guest's (or, while pending, the host address's; nil if neither is known).
    public var family: Family? { guestAddress?.family ?? hostAddress?.family }
    public var isPending: Bool { guestAddress == nil }

    /// The forward's host side as one key (protocol, host address, interface, host ports): what
    /// other kinds' rules for this forward are keyed by (`SourceFilter.identity`, `Hold.key`).
    public var hostKey: String { Self.hostKey(proto: proto, hostAddress: hostAddress, dev: dev, ports: hostPorts) }

    public static func hostKey(proto: IPProto, hostAddress: IPAddress?, dev: String?, ports: PortRange) -> String {
        "\(proto)|\(hostAddress.map { "\($0)" } ?? "")|\(dev ?? "")|\(ports)"
    }
}

/// What a domain's metadata asks for, resolved: the output of `virtport plan`.
public struct Plan: Sendable, Equatable {
    public var domainName: String
    public var domainUUID: String
    public var mappings: [Mapping]
    /// One per guarded NIC, in interface order.
    public var guards: [GuardPlan]
    /// The rule kinds' shares of the plan (`ForwardAttribute.plan`), by kind.
    public var kinds = KindValues()
    public init(domainName: String, domainUUID: String, mappings: [Mapping], guards: [GuardPlan] = []) {
        self.domainName = domainName
        self.domainUUID = domainUUID
        self.mappings = mappings
        self.guards = guards
    }
}

/// Where an address a guarded port may use came from.
public enum GuardAddressSource: String, Sendable, Hashable {
    /// The guard's `ip=`: then the only ones.
    case attribute = "ip-attribute"
    /// `guest=` of a portForward on the same NIC.
    case forward = "forward-guest"
    case reservation = "dhcp-reservation"
    case lease = "dhcp-lease"
}

public struct GuardAddress: Sendable, Hashable {
    public var address: IPAddress
    public var source: GuardAddressSource
    public init(address: IPAddress, source: GuardAddressSource) {
        self.address = address
        self.source = source
    }
}

/// One guarded bridge port, resolved: what `table bridge virtport` and the port's isolated flag
/// receive for it. Every flag is the effective one (`dhcpServer`/`routerAdvert` true: allowed).
public struct GuardPlan: Sendable, Hashable {
    public var mac: MACAddress
    /// The tap (`<target dev>`); nil before qemu `start` (prepare, an inactive definition).
    public var tap: String?
    public var bridge: String?
    public var network: String?
    public var spoofing: Bool
    public var dhcpServer: Bool
    public var routerAdvert: Bool
    public var isolated: Bool
    /// Allowed IPv4/IPv6 source addresses (link-local IPv6, 0.0.0.0 for DHCP and :: for DAD are
    /// always allowed and not listed). Empty with spoofing on: only DHCP and DAD until known.
    public var addresses: [GuardAddress]
    /// The `[guard]` key that requires this guard (nil: only the domain's `<vp:guard>` asks).
    public var requiredBy: String?

    public init(mac: MACAddress, tap: String?, bridge: String?, network: String?, spoofing: Bool, dhcpServer: Bool,
                routerAdvert: Bool, isolated: Bool, addresses: [GuardAddress], requiredBy: String? = nil) {
        self.mac = mac
        self.tap = tap
        self.bridge = bridge
        self.network = network
        self.spoofing = spoofing
        self.dhcpServer = dhcpServer
        self.routerAdvert = routerAdvert
        self.isolated = isolated
        self.addresses = addresses
        self.requiredBy = requiredBy
    }

    /// Until an address is known the port may only do DHCP and DAD.
    public var isWaitingForAddress: Bool { spoofing && addresses.isEmpty }
}
