#if canImport(Glibc)
import Glibc
#endif
import POSIX
public import VirtPortCore

/// Guest addresses from the files libvirt keeps on disk. A hook must never call the libvirt API
/// (deadlock), so this reads: the live network XML (`/run/libvirt/network/NAME.xml`, falling back to
/// the definition `/etc/libvirt/qemu/networks/NAME.xml`) for static `<host mac ip>` reservations, and
/// dnsmasq's status file (`/var/lib/libvirt/dnsmasq/BRIDGE.status`) for current leases.
public struct LibvirtFiles: GuestAddressResolver {
    public let config: Config
    /// `virtport plan --network-xml FILE`: these win over what is on disk.
    public let overrides: [NetworkDefinition]

    public init(config: Config, overrides: [NetworkDefinition]) {
        self.config = config
        self.overrides = overrides
    }

    /// The network's live XML (else its definition), parsed once per resolver: a plan asks for the
    /// same network for every forward and check. A file that cannot be read or parsed counts as no
    /// network (the planner then refuses `guest=` there and leaves the guest address pending).
    public func network(_ name: String) -> NetworkDefinition? {
        if let n = overrides.first(where: { $0.name == name }) { return n }
        return facts.network(name) {
            for path in ["\(config.libvirtRunDir)/network/\(name).xml", "\(config.libvirtConfigDir)/qemu/networks/\(name).xml"] {
                if let bytes = (try? IO.readFile(path)) ?? nil, let n = try? NetworkXML.parse(bytes) { return n }
            }
            return nil
        }
    }

    /// What a plan asks more than once (`HostFacts`): host addresses, parsed networks.
    let facts = HostFacts()

    public func network(named name: String) -> NetworkDefinition? { network(name) }

    public func localAddresses() -> [IPAddress]? { facts.localAddresses }

    public func leaseHolders(network name: String, address: IPAddress) -> [MACAddress] {
        guard let bridge = network(name)?.bridge,
              let bytes = (try? IO.readFile("\(config.libvirtStateDir)/dnsmasq/\(bridge).status")) ?? nil
        else { return [] }
        let now = Int64(time(nil))
        return (DnsmasqStatus.complete(bytes) ?? []).filter { $0.address == address && ($0.expiry == 0 || $0.expiry > now) }.map(\.mac)
    }

    public func reservation(network name: String, mac: MACAddress, family: Family?) -> IPAddress? {
        network(name)?.reservation(for: mac, family: family)
    }

    public func lease(network name: String, mac: MACAddress, family: Family?) -> IPAddress? {
        guard let bridge = network(name)?.bridge,
              let bytes = (try? IO.readFile("\(config.libvirtStateDir)/dnsmasq/\(bridge).status")) ?? nil
        else { return nil }
        let now = Int64(time(nil))
        // Newest lease wins when dnsmasq still lists an old one for the same MAC.
        return (DnsmasqStatus.complete(bytes) ?? [])
            .filter { $0.mac == mac && (family == nil || $0.address.family == family) && ($0.expiry == 0 || $0.expiry > now) }
            .max(by: { $0.expiry < $1.expiry })?.address
    }
}

/// libvirt's leaseshelper status file: a JSON array of flat objects
/// `{"ip-address": "…", "mac-address": "…", "hostname": "…", "expiry-time": N}`.
public enum DnsmasqStatus {
    public struct Lease: Equatable, Sendable {
        public var address: IPAddress
        public var mac: MACAddress
        public var expiry: Int64
    }

    /// The leases of a whole file, or nil when it is not one complete JSON array of leases (a
    /// half-written or garbage file tells nothing: a truncated "192.168.122.61" reads as a valid
    /// "192.168.122.6"). leaseshelper replaces the file by rename, so a reader normally sees whole files.
    public static func complete(_ bytes: [UInt8]) -> [Lease]? {
        let text = String(decoding: bytes, as: UTF8.self).trimmed
        // An empty file is what libvirt leaves while no guest holds a lease: no leases, not garbage.
        if text.isEmpty { return [] }
        guard text.hasPrefix("["), text.hasSuffix("]") else { return nil }
        guard text.reduce(0, { $1 == "{" ? $0 + 1 : $0 }) == text.reduce(0, { $1 == "}" ? $0 + 1 : $0 }) else { return nil }
        var malformed = false
        let parsed = leases(bytes, malformed: &malformed)
        return malformed ? nil : parsed
    }

    /// The unexpired leases of a file by MAC (addresses sorted), nil when the file is not complete.
    public static func current(_ bytes: [UInt8], now: Int64) -> [MACAddress: [IPAddress]]? {
        guard let all = complete(bytes) else { return nil }
        var out: [MACAddress: [IPAddress]] = [:]
        for l in all where l.expiry == 0 || l.expiry > now { out[l.mac, default: []].append(l.address) }
        return out.mapValues { $0.sorted { "\($0)" < "\($1)" } }
    }

    static func leases(_ bytes: [UInt8]) -> [Lease] {
        var malformed = false
        return leases(bytes, malformed: &malformed)
    }

    /// - Parameter malformed: set when an object names an address or MAC that does not parse (an
    ///   object without a MAC, a DHCPv6 lease of a client that sent none, is skipped, not malformed).
    static func leases(_ bytes: [UInt8], malformed: inout Bool) -> [Lease] {
        var out: [Lease] = []
        let text = String(decoding: bytes, as: UTF8.self)
        for object in text.split(separator: "{").dropFirst() {
            let body = object.split(separator: "}", maxSplits: 1).first ?? object
            var fields: [String: String] = [:]
            for pair in body.split(separator: ",") {
                let kv = pair.split(separator: ":", maxSplits: 1)
                guard kv.count == 2 else { continue }
                fields[unquote(kv[0])] = unquote(kv[1])
            }
            guard let ipText = fields["ip-address"], let macText = fields["mac-address"] else { continue }
            guard let ip = IPAddress(ipText), let mac = MACAddress(macText) else {
                malformed = true
                continue
            }
            out.append(Lease(address: ip, mac: mac, expiry: fields["expiry-time"].flatMap { Int64($0) } ?? 0))
        }
        return out
    }

    private static func unquote(_ s: Substring) -> String {
        var t = s.trimmed
        t = String(t.filter { $0 != "\n" && $0 != "\r" }).trimmed
        if t.hasPrefix("\"") && t.hasSuffix("\"") && t.count >= 2 { t = String(t.dropFirst().dropLast()) }
        return t.lowercased()
    }
}
