public import VirtPortCore

/// One kernel map element = one host port: `[dev .] [hostAddress .] proto . hostPort : guestAddress . guestPort`.
///
/// Which of the eight `fwd*` maps holds it follows from `family`, `hostAddress` and `dev`
/// (see `ForwardMap`).
public struct ForwardElement: Hashable, Sendable, CustomStringConvertible {
    public var family: Family
    public var proto: IPProto
    /// nil: every local address of the family (map without `daddr`, matched by `fib daddr type local`).
    public var hostAddress: IPAddress?
    /// nil: any input interface (map without `iifname`).
    public var dev: String?
    public var hostPort: UInt16
    public var guestAddress: IPAddress
    public var guestPort: UInt16

    /// - Parameter family: defaults to the guest address's family.
    public init(family: Family? = nil, proto: IPProto, hostAddress: IPAddress? = nil, dev: String? = nil,
                hostPort: UInt16, guestAddress: IPAddress, guestPort: UInt16) {
        self.family = family ?? guestAddress.family
        self.proto = proto
        self.hostAddress = hostAddress
        self.dev = dev
        self.hostPort = hostPort
        self.guestAddress = guestAddress
        self.guestPort = guestPort
    }

    /// Name of the kernel map holding this element ("fwd4", "fwd6_dev_addr", …).
    public var mapName: String { ForwardMap(self).name }

    /// "tcp/8080 -> 192.168.122.10:22", "udp/[2001:db8::5]:53 on eth0 -> [fd00::10]:53".
    public var description: String {
        var host = proto.rawValue + "/"
        if let hostAddress { host += Self.endpoint(hostAddress, hostPort) } else { host += String(hostPort) }
        if let dev { host += " on " + dev }
        return host + " -> " + Self.endpoint(guestAddress, guestPort)
    }

    static func endpoint(_ address: IPAddress, _ port: UInt16) -> String {
        address.family == .ipv6 ? "[\(address)]:\(port)" : "\(address):\(port)"
    }
}

extension Mapping {
    /// The kernel elements of this mapping: one per host port, the guest port advancing with it.
    /// Empty while the mapping is pending (no guest address yet).
    public var elements: [ForwardElement] {
        guard let guestAddress else { return [] }
        var out: [ForwardElement] = []
        out.reserveCapacity(hostPorts.count)
        for offset in 0..<hostPorts.count {
            let guestPort = Int(guestPortStart) + offset
            guard guestPort <= Int(UInt16.max) else { break }  // the planner rejects this; never wrap
            out.append(ForwardElement(
                family: guestAddress.family, proto: proto, hostAddress: hostAddress, dev: dev,
                hostPort: UInt16(Int(hostPorts.start) + offset), guestAddress: guestAddress,
                guestPort: UInt16(guestPort)))
        }
        return out
    }
}
