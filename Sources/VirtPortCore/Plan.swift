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
}

/// What a domain's metadata asks for, resolved: the output of `virtport plan`.
public struct Plan: Sendable, Equatable {
    public var domainName: String
    public var domainUUID: String
    public var mappings: [Mapping]
    public init(domainName: String, domainUUID: String, mappings: [Mapping]) {
        self.domainName = domainName
        self.domainUUID = domainUUID
        self.mappings = mappings
    }
}
