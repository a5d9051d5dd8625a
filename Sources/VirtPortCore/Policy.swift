/// Root-owned limits on what a domain's metadata may claim (config file `[policy]`).
/// Anyone who can edit a domain's XML must not be able to grab host port 22.
public struct Policy: Sendable, Equatable {
    public enum OnInternalError: String, Sendable { case warn, refuse }

    /// Host ports metadata may forward (default 1024-65535).
    public var hostPorts: [PortRange]
    /// Host listen addresses metadata may name in `address=`; nil: any address.
    public var listenAddresses: [IPAddress]?
    /// Whether a forward without `address=` (every local address) is allowed.
    public var allowAnyAddress: Bool
    /// Most mappings (contiguous ranges after `exclude`) one domain may have.
    public var maxForwardsPerDomain: Int
    /// Most host ports one domain may have in total.
    public var maxPortsPerDomain: Int
    /// What a start hook does on internal trouble (journal, kernel, files): keep the VM starting
    /// (warn) or refuse it. Config key `on_internal_error`.
    public var onInternalError: OnInternalError
    /// Where `guest=` may point for a NIC that is not on a libvirt network with addresses (a
    /// plain host bridge, macvtap, a bridge-mode libvirt network): nothing unless configured.
    public var guestNetworks: [IPPrefix] = []
    /// `[guard] bridges`: every port of these bridges is guarded (spoofing on, DHCP server and
    /// router advertisements blocked) whether or not the domain has a `<vp:guard>`.
    public var guardBridges: [String] = []
    /// `[guard] networks`: the same for every NIC on these libvirt networks.
    public var guardNetworks: [String] = []
    /// The `[policy]` keys rule kinds declare (`RuleKind.policyKeys`), by key.
    public var kinds = KindValues()
    /// Whether `[guard]` guards any port by itself (then a hook cannot skip a domain without metadata).
    public var guardsAnyPort: Bool { !guardBridges.isEmpty || !guardNetworks.isEmpty }

    public init(hostPorts: [PortRange] = [PortRange(1024, 65535)], listenAddresses: [IPAddress]? = nil,
                allowAnyAddress: Bool = true, maxForwardsPerDomain: Int = 64, maxPortsPerDomain: Int = 4096,
                onInternalError: OnInternalError = .warn) {
        self.hostPorts = hostPorts
        self.listenAddresses = listenAddresses
        self.allowAnyAddress = allowAnyAddress
        self.maxForwardsPerDomain = maxForwardsPerDomain
        self.maxPortsPerDomain = maxPortsPerDomain
        self.onInternalError = onInternalError
    }
}

/// Answers "what is the guest address of this NIC" and "what does the host have" from sources
/// that need I/O (network XML on disk, dnsmasq lease file, the kernel's address list). The
/// planner stays pure; the app supplies a file-backed resolver.
public protocol GuestAddressResolver {
    /// The static `<dhcp><host mac= ip=>` reservation of `network` for `mac`, for `family`.
    func reservation(network: String, mac: MACAddress, family: Family?) -> IPAddress?
    /// A current DHCP lease of `network` for `mac`, for `family`.
    func lease(network: String, mac: MACAddress, family: Family?) -> IPAddress?
    /// The definition of libvirt network `name` (its subnets and reservations); nil when unknown.
    func network(named name: String) -> NetworkDefinition?
    /// The MACs holding a current DHCP lease of `address` in network `name`.
    func leaseHolders(network name: String, address: IPAddress) -> [MACAddress]
    /// Every address configured on the host's interfaces; nil when they cannot be read.
    func localAddresses() -> [IPAddress]?
    /// Another NIC (not `mac`) that owns `address` now: a running domain's forward or guard, as
    /// "domain 'NAME' (mac M)"; nil when none.
    func addressHolder(_ address: IPAddress, except mac: MACAddress) -> String?
    /// The gateways of the host's routes through interface `name` (its router on a plain bridge).
    func gateways(interface name: String) -> [IPAddress]
}

extension GuestAddressResolver {
    public func network(named name: String) -> NetworkDefinition? { nil }
    public func leaseHolders(network name: String, address: IPAddress) -> [MACAddress] { [] }
    public func localAddresses() -> [IPAddress]? { nil }
    public func addressHolder(_ address: IPAddress, except mac: MACAddress) -> String? { nil }
    public func gateways(interface name: String) -> [IPAddress] { [] }
}

/// A resolver that knows nothing: every forward without `guest=` is pending, and what needs the
/// host's facts (`address=`, `guest=` on a libvirt network) is refused.
public struct NoGuestAddresses: GuestAddressResolver {
    public init() {}
    public func reservation(network: String, mac: MACAddress, family: Family?) -> IPAddress? { nil }
    public func lease(network: String, mac: MACAddress, family: Family?) -> IPAddress? { nil }
}

extension Policy {
    /// A refusal names the config line that decided it, with its current value, so the admin knows
    /// what to change: `[policy] host_ports = ["1024-65535"]`.
    public func setting(_ key: Key) -> String {
        func list(_ items: [String]) -> String { "[" + items.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
        let value: String
        switch key {
        case .hostPorts: value = list(hostPorts.map(\.description))
        case .listenAddresses:
            value = list((listenAddresses == nil && allowAnyAddress ? ["any"] : []) + (listenAddresses ?? []).map(\.description))
        case .maxForwardsPerDomain: value = "\(maxForwardsPerDomain)"
        case .maxPortsPerDomain: value = "\(maxPortsPerDomain)"
        case .guardBridges: return "[guard] bridges = \(list(guardBridges))"
        case .guardNetworks: return "[guard] networks = \(list(guardNetworks))"
        }
        return "[policy] \(key.rawValue) = \(value)"
    }

    public enum Key: String, Sendable {
        case hostPorts = "host_ports", listenAddresses = "listen_addresses"
        case maxForwardsPerDomain = "max_forwards_per_domain", maxPortsPerDomain = "max_ports_per_domain"
        case guardBridges = "bridges", guardNetworks = "networks"
    }
}
